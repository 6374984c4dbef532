"""The OpenStack path through the CLI, as an operator runs it: the project's own module applied by
the real terraform-provider-openstack against the test OpenStack, then destroyed.

Sites are `infra/sites/openstack.example.yaml` pointed at the test cloud. Their Deis nodes use a
`soft` anti-affinity group: Terraform boots them in parallel, and parallel boots into a `hard` group
race in nova's scheduler (the README's OpenStack section). Nothing answers on the nodes (the
hypervisor is fake), so provision runs with --infrastructure-only.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from openstack.connection import Connection

from cidemo_infra.cloud import find
from cidemo_infra.data import TERRAFORM_MODULE
from cidemo_infra.inventory import Inventory
from cidemo_infra.state import StateDir
from tests.cloud.conftest import EXTERNAL_NETWORK, FLAVOR_DEIS, FLAVOR_STANDALONE, IMAGE, merge
from tests.conftest import REPO, SITES, run_cidemo
from tests.support.tfschema import load_hcl

pytestmark = pytest.mark.cloud
MODULE = TERRAFORM_MODULE
ADMINS = "203.0.113.0/24"


def module_locals() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in load_hcl(MODULE / "security.tf")["locals"]:
        merged.update({k: v for k, v in block.items() if not k.startswith("__")})
    return merged


@dataclass
class OpSite:
    """A site file for the test cloud, its state directory, and the CLI pointed at both."""

    name: str
    path: Path
    state_dir: Path
    data: dict[str, Any]
    running: list[subprocess.Popen[bytes]]

    def args(self, *command: str) -> list[str]:
        return [*command, "--site", str(self.path), "--state-dir", str(self.state_dir)]

    def cidemo(self, *command: str, timeout: float = 900) -> Any:
        return run_cidemo(*self.args(*command), timeout=timeout)

    def popen(self, *command: str, log: Path) -> subprocess.Popen[bytes]:
        """The CLI in a process group of its own (terraform and its provider are in it too)."""
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cidemo_infra", *self.args(*command)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "NO_COLOR": "1"},
                cwd=REPO,
                start_new_session=True,
            )
        self.running.append(proc)
        return proc

    @property
    def state(self) -> StateDir:
        return StateDir.resolve(self.name, str(self.state_dir))

    def servers(self, conn: Connection) -> list[Any]:
        prefix = f"{self.name}-"
        return [s for s in conn.compute.servers(details=True) if s.name.startswith(prefix)]


@pytest.fixture
def op_site(
    new_site_name: Callable[[], str],
    cloud_name: str,
    public_key: str,
    tmp_path: Path,
    external_subnet_stays_here: str,
) -> Iterator[Callable[..., OpSite]]:
    """The example OpenStack site, renamed and pointed at the test cloud. A CLI process a failed
    test left running is killed before the finalizer sweeps, so it cannot create after it."""
    running: list[subprocess.Popen[bytes]] = []

    def make(**changes: Any) -> OpSite:
        name = new_site_name()
        example = yaml.safe_load((SITES / "openstack.example.yaml").read_text())
        second = int(name[-4:], 16) % 250
        data = merge(
            example,
            {
                "name": name,
                "cloud": cloud_name,
                "network": {"cidr": f"10.77.{second}.0/24", "external_network": EXTERNAL_NETWORK},
                "ssh": {"key_name": f"{name}-key", "public_key": public_key},
                "roles": {
                    "deis": {"flavor": FLAVOR_DEIS, "image": IMAGE, "anti_affinity": "soft"},
                    "standalone": {"flavor": FLAVOR_STANDALONE, "image": IMAGE},
                },
                "timeouts": {"terraform": 600, "server_active": 300},
            },
        )
        data["ssh"].pop("public_key_file", None)
        data["nodes"] = [
            {**n, "private_ip": n["private_ip"].replace("10.42.0.", f"10.77.{second}.")}
            for n in example["nodes"]
        ]
        data = merge(data, changes)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return OpSite(name, path, tmp_path / f"state-{name}", data, running)

    yield make
    for proc in running:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rows(result: Any) -> list[dict[str, str]]:
    infrastructure: list[dict[str, str]] = json.loads(result.out).get("infrastructure", [])
    return infrastructure


def site_resources(conn: Connection, site: OpSite) -> list[tuple[str, str]]:
    return sorted(
        (leak.kind, leak.name) for leak in find(conn, site.name, site.data["ssh"]["key_name"])
    )


def expected_resources(site: OpSite) -> list[tuple[str, str]]:
    nodes = [n["name"] for n in site.data["nodes"]]
    name = site.name
    return sorted(
        [("server", f"{name}-{n}") for n in nodes]
        + [("floating_ip", f"{name}-{n}") for n in nodes]
        + [("port", f"{name}-{n}") for n in nodes]
        + [("router", f"{name}-router"), ("subnet", f"{name}-subnet"), ("network", f"{name}-net")]
        + [("security_group", f"{name}-public"), ("security_group", f"{name}-cluster")]
        + [("server_group", f"{name}-deis"), ("keypair", f"{name}-key")]
    )


def test_plan_provision_replan_destroy_with_the_real_provider(
    conn: Connection, admin_conn: Connection, op_site: Callable[..., OpSite], public_key: str
) -> None:
    site = op_site()
    nodes = {n["name"]: n for n in site.data["nodes"]}

    planned = site.cidemo("plan", "--infrastructure-only", "--json")
    assert planned.rc == 3, planned.err
    creates = {r["address"] for r in rows(planned) if r["action"] == "create"}
    assert len(creates) == len(rows(planned)) == 43  # 2222 is open only where Deis v1 runs
    assert 'openstack_compute_instance_v2.node["deis-1"]' in creates

    applied = site.cidemo("provision", "--infrastructure-only", "--yes")
    assert applied.rc == 0, applied.err
    # terraform's own progress reached the operator while it ran
    assert 'openstack_compute_instance_v2.node["deis-1"]: Creating...' in applied.err
    assert "Apply complete! Resources: 39 added" in applied.err
    assert "no service was placed" in applied.out

    # every resource the module declares, as the cloud reports it
    net = conn.network
    tag = f"cidemo-site-{site.name}"
    network = net.find_network(f"{site.name}-net", ignore_missing=False)
    assert tag in network.tags
    subnet = net.find_subnet(f"{site.name}-subnet", ignore_missing=False)
    assert (subnet.network_id, subnet.cidr) == (network.id, site.data["network"]["cidr"])
    external = net.find_network(EXTERNAL_NETWORK, ignore_missing=False)
    router = net.find_router(f"{site.name}-router", ignore_missing=False)
    assert router.external_gateway_info["network_id"] == external.id
    interfaces = [p for p in net.ports(device_id=router.id) if p.device_owner.endswith("interface")]
    assert [p.fixed_ips[0]["subnet_id"] for p in interfaces] == [subnet.id]

    public = net.find_security_group(f"{site.name}-public", ignore_missing=False)
    cluster = net.find_security_group(f"{site.name}-cluster", ignore_missing=False)
    ingress = [
        r
        for g in (public, cluster)
        for r in net.security_group_rules(security_group_id=g.id)
        if r.direction == "ingress"
    ]
    local = module_locals()
    from_cluster = {
        (r.protocol, r.port_range_min)
        for r in ingress
        if r.security_group_id == cluster.id and r.remote_group_id == cluster.id
    }
    assert from_cluster == {(p["protocol"], p["port"]) for p in local["cluster_ports"].values()}
    world = [r for r in ingress if r.remote_ip_prefix == "0.0.0.0/0"]
    assert sorted(r.port_range_min for r in world) == [80, 443]  # no Deis builder on Flatcar
    assert all(r.security_group_id == public.id for r in world)
    admins = {
        (r.security_group_id, r.port_range_min) for r in ingress if r.remote_ip_prefix == ADMINS
    }
    assert admins == {(public.id, 22), (cluster.id, 2376)}
    assert len(ingress) == len(local["cluster_ports"]) + 2 + 2

    keypair = conn.compute.find_keypair(f"{site.name}-key", ignore_missing=False)
    assert keypair.public_key.split()[:2] == public_key.split()[:2]
    group = next(g for g in conn.compute.server_groups() if g.name == f"{site.name}-deis")
    assert group.policy == "soft-anti-affinity"

    servers = {s.name: s for s in site.servers(conn)}
    assert set(servers) == {f"{site.name}-{n}" for n in nodes}
    assert set(group.member_ids) == {servers[f"{site.name}-deis-{i}"].id for i in (1, 2, 3)}
    external_subnet = next(net.subnets(network_id=external.id)).cidr
    inventory = Inventory.load(site.state.inventory_file)
    assert inventory is not None
    for name, node in nodes.items():
        server = admin_conn.compute.get_server(servers[f"{site.name}-{name}"].id)
        assert server.status == "ACTIVE"
        assert tag in server.tags
        assert server.metadata == {"cidemo_site": site.name, "cidemo_role": node["role"]}
        assert server.flavor["original_name"] == site.data["roles"][node["role"]]["flavor"]
        rendered = (site.state.user_data_dir / f"{name}.yaml").read_text()
        assert base64.b64decode(server.user_data).decode() == rendered
        port = net.find_port(f"{site.name}-{name}", ignore_missing=False)
        assert port.device_id == server.id
        assert port.fixed_ips == [{"subnet_id": subnet.id, "ip_address": node["private_ip"]}]
        assert set(port.security_group_ids) == {public.id, cluster.id}
        (fip,) = [f for f in net.ips(port_id=port.id)]
        assert fip.description == f"{site.name}-{name}"
        assert ipaddress.ip_address(fip.floating_ip_address) in ipaddress.ip_network(
            external_subnet
        )
        # `terraform output -json` became the inventory
        entry = inventory.node(name)
        assert (entry.role, entry.private_ip) == (node["role"], node["private_ip"])
        assert entry.public_ip == fip.floating_ip_address
        assert entry.docker_url == f"tcp://{fip.floating_ip_address}:2376"

    replanned = site.cidemo("plan", "--infrastructure-only")
    assert replanned.rc == 0, replanned.out + replanned.err
    assert "no changes" in replanned.out

    destroyed = site.cidemo("destroy", "--yes")
    assert destroyed.rc == 0, destroyed.err
    assert "Destroy complete! Resources: 43 destroyed." in destroyed.err
    assert site_resources(conn, site) == []
    assert not site.state.inventory_file.exists()


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.5)


def kill_in_apply(conn: Connection, site: OpSite, log: Path) -> None:
    """A provision SIGKILLed (with terraform and the provider) once the cloud has a server."""
    proc = site.popen("provision", "--infrastructure-only", "--yes", log=log)
    try:
        wait_for("a server of the site exists", lambda: bool(site.servers(conn)))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_a_provision_killed_in_apply_converges_and_destroys_to_nothing(
    conn: Connection, op_site: Callable[..., OpSite], tmp_path: Path
) -> None:
    site = op_site()
    kill_in_apply(conn, site, tmp_path / "killed.log")

    # the cloud holds what the state does not: the plan deletes it before creating anything
    planned = site.cidemo("plan", "--infrastructure-only", "--json")
    assert planned.rc == 3, planned.err
    orphans = [r["address"] for r in rows(planned) if r["action"] == "delete (not in state)"]
    assert any(a.startswith("server ") for a in orphans), rows(planned)

    converged = site.cidemo("provision", "--infrastructure-only", "--yes")
    assert converged.rc == 0, converged.err
    assert "not in Terraform's state" in converged.out
    assert site_resources(conn, site) == expected_resources(site)  # nothing twice
    assert all(s.status == "ACTIVE" for s in site.servers(conn))
    again = site.cidemo("plan", "--infrastructure-only")
    assert again.rc == 0, again.out + again.err

    destroyed = site.cidemo("destroy", "--yes")
    assert destroyed.rc == 0, destroyed.err
    assert site_resources(conn, site) == []


@pytest.mark.full_only  # a kill during apply also runs in make test (killed in apply)
def test_a_site_killed_early_in_apply_is_destroyed_to_nothing(
    conn: Connection, op_site: Callable[..., OpSite], tmp_path: Path
) -> None:
    site = op_site()
    kill_in_apply(conn, site, tmp_path / "killed.log")

    destroyed = site.cidemo("destroy", "--yes")
    assert destroyed.rc == 0, destroyed.err
    assert "not in Terraform's state" in destroyed.out
    assert site_resources(conn, site) == []


@pytest.mark.full_only  # about two minutes; one site's resources are checked in make test
def test_two_sites_at_once_keep_to_their_own_resources(
    conn: Connection, op_site: Callable[..., OpSite], tmp_path: Path
) -> None:
    first, second = op_site(), op_site()
    procs = [
        s.popen("provision", "--infrastructure-only", "--yes", log=tmp_path / f"{s.name}.log")
        for s in (first, second)
    ]
    codes = [proc.wait(timeout=900) for proc in procs]
    for code, s in zip(codes, (first, second), strict=True):
        assert code == 0, (tmp_path / f"{s.name}.log").read_text()[-3000:]
    assert site_resources(conn, first) == expected_resources(first)
    assert site_resources(conn, second) == expected_resources(second)
    second_ids = {leak.id for leak in find(conn, second.name, f"{second.name}-key")}

    destroyed = first.cidemo("destroy", "--yes")
    assert destroyed.rc == 0, destroyed.err
    assert site_resources(conn, first) == []
    assert {leak.id for leak in find(conn, second.name, f"{second.name}-key")} == second_ids
    untouched = second.cidemo("plan", "--infrastructure-only")
    assert untouched.rc == 0, untouched.out + untouched.err

    assert second.cidemo("destroy", "--yes").rc == 0
    assert site_resources(conn, second) == []


def test_a_quota_exhausted_during_apply_is_one_line_and_destroy_removes_all(
    conn: Connection,
    op_site: Callable[..., OpSite],
    instance_quota: Callable[[int], None],
    tmp_path: Path,
) -> None:
    site = op_site()
    log = tmp_path / "quota.log"
    proc = site.popen("provision", "--infrastructure-only", "--yes", log=log)
    try:
        # preflight has passed once the main plan starts; then the quota runs out
        wait_for("the main plan", lambda: "==> terraform plan\n" in log.read_text())
        in_use = len(list(conn.compute.servers()))
        instance_quota(in_use + 1)
        assert proc.wait(timeout=600) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    (error,) = [line for line in output.splitlines() if line.startswith("cidemo: error:")]
    assert error.startswith("cidemo: error: terraform apply failed (exit 1): ")
    assert 'openstack_compute_instance_v2.node["' in error
    # nova refuses at the API (HTTP 403) or, when the request got there first, sets the server to
    # ERROR with a fault: either way its reason is on the line
    assert "Quota exceeded for" in error and "instances" in error, error
    assert "Traceback" not in output

    instance_quota(100)
    destroyed = site.cidemo("destroy", "--yes")
    assert destroyed.rc == 0, destroyed.err
    assert site_resources(conn, site) == []
