"""The OpenStack target's chain after Terraform: outputs -> inventory -> TLS engines ->
placement -> checks, and the Docker TLS transport itself.

The real module is applied by the real provider in the cloud tier (tests/cloud/test_provider.py),
but the test OpenStack's hypervisor is fake: no engine answers at its servers' addresses. Until lab
nodes boot them, this is the one test of what follows the apply on the OpenStack path, so a
stand-in module of built-in resources (tests/data/terraform/standin-openstack, same variables and
output shape as the real module) is applied by the real terraform. Its nodes' "floating IPs" are
this machine's loopback, where a second dockerd serves the Docker API with TLS from the site's own
CA, and it reports the nodes' private addresses 10.42.0.N as the loopback aliases 127.0.0.N, where
a real etcd (Debian's, v2 API on, TLS with client certificates) listens, as the etcd members on
cloud nodes do. No traffic goes
to 10.42.x.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml

from cidemo_infra import lifecycle
from cidemo_infra.console import Reporter
from cidemo_infra.data import TERRAFORM_MODULE
from cidemo_infra.engines import client_for
from cidemo_infra.errors import EngineError
from cidemo_infra.inventory import Inventory
from cidemo_infra.render.site_files import render_site
from cidemo_infra.render.tfvars import TFVARS_NAME
from cidemo_infra.site import load_site
from cidemo_infra.state import StateDir
from cidemo_infra.targets.openstack import (
    DOCKER_TLS_PORT,
    allocate_public_addresses,
    inventory_from_outputs,
)
from cidemo_infra.terraform import TerraformDriver
from cidemo_infra.tls.pki import ensure_pki
from tests.conftest import REPO, need, run_cidemo
from tests.integration.conftest import spare_dockerd, start_process, stop_process

pytestmark = pytest.mark.integration
NODE_IPS = {
    "deis-1": "127.0.0.11",
    "deis-2": "127.0.0.12",
    "deis-3": "127.0.0.13",
    "standalone-1": "127.0.0.14",
}


@dataclass
class Chain:
    site_path: Path
    state: StateDir
    engine: docker.DockerClient
    work: Path
    had_docker0: bool  # the machine's dockerd bridge, before the spare engine started


def link_exists(name: str) -> bool:
    return (
        subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode
        == 0
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    need(shutil.which("dockerd") is not None, "dockerd (Debian docker.io)")
    need(shutil.which("etcd") is not None, "etcd (Debian etcd-server)")
    work = tmp_path_factory.mktemp("chain")
    name = "ch" + secrets.token_hex(3)
    site_path = work / f"{name}.yaml"
    site_path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "target": "openstack",
                "cloud": "standin",
                "network": {"cidr": "10.42.0.0/24"},
                "ssh": {"public_key_file": str(REPO / "infra/sites/example-key.pub")},
                "roles": {
                    "deis": {"flavor": "m1.large", "image": "flatcar"},
                    "standalone": {"flavor": "m1.medium", "image": "flatcar"},
                },
                "nodes": [
                    {
                        "name": n,
                        "role": n.split("-")[0],
                        "private_ip": ip.replace("127.0.0.", "10.42.0."),
                    }
                    for n, ip in NODE_IPS.items()
                ],
                "services": {
                    "galera": {"cluster_name": name, "ttl": 10, "join_timeout": 120},
                    "jenkins": {"image": "project:jenkins-standin"},
                },
                "timeouts": {"docker": 60, "etcd": 60, "health": 240},
            }
        )
    )
    site = load_site(site_path)
    state = StateDir.resolve(site.name, str(work / "state"))
    render_site(site, state, str(site_path))
    tls = state.tls_dir
    root = Path(f"/tmp/cidemo-chain-{name}")
    # as on the nodes: https only, and only clients with a certificate of the site CA; its
    # server certificate names the addresses the stand-in reports for the nodes
    pki = ensure_pki(tls, site.name, {"chain-etcd": sorted(NODE_IPS.values())})
    etcd = start_process(
        [
            "etcd",
            "--name",
            "chain",
            "--data-dir",
            str(work / "etcd"),
            "--enable-v2=true",
            "--cert-file",
            str(pki.server_cert_path("chain-etcd")),
            "--key-file",
            str(pki.server_key_path("chain-etcd")),
            "--trusted-ca-file",
            str(tls / "ca.pem"),
            "--client-cert-auth",
            "--listen-client-urls",
            ",".join(f"https://{ip}:2379" for ip in NODE_IPS.values()),
            "--advertise-client-urls",
            "https://127.0.0.14:2379",
            "--listen-peer-urls",
            "http://127.0.0.11:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.11:2380",
            "--initial-cluster",
            "chain=http://127.0.0.11:2380",
        ],
        work / "etcd.log",
    )
    url = f"tcp://127.0.0.1:{DOCKER_TLS_PORT}"
    had_docker0 = link_exists("docker0")
    try:
        with spare_dockerd(
            root,
            url,
            lambda: client_for(url, str(tls), node="chain"),
            "--tlsverify",
            "--tlscacert",
            str(tls / "ca.pem"),
            "--tlscert",
            str(tls / "nodes/standalone-1/server-cert.pem"),
            "--tlskey",
            str(tls / "nodes/standalone-1/server-key.pem"),
        ) as engine:
            yield Chain(site_path, state, engine, work, had_docker0)
    finally:
        stop_process(etcd)


def test_tls_engine_refuses_clients_without_the_sites_certificate(
    chain: Chain, tmp_path: Path
) -> None:
    url = f"tcp://127.0.0.1:{DOCKER_TLS_PORT}"
    ensure_pki(tmp_path / "other", "other", {"x": ["127.0.0.1"]})
    with pytest.raises(EngineError, match="does not answer"):
        client_for(url, str(tmp_path / "other"), node="foreign")
    with pytest.raises(EngineError, match="does not answer"):
        client_for(url, None, allow_plain_tcp=True, node="plain")
    with pytest.raises(EngineError, match="refusing plain"):
        client_for(url, None, node="plain")
    assert chain.engine.ping()


def test_outputs_to_inventory_to_placement_over_tls(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = load_site(chain.site_path)
    module = chain.work / "standin-module"  # the real contract (variables.tf), stand-in resources
    module.mkdir(exist_ok=True)
    shutil.copy(TERRAFORM_MODULE / "variables.tf", module / "variables.tf")
    shutil.copy(REPO / "tests/data/terraform/standin-openstack/main.tf", module / "main.tf")
    monkeypatch.setenv("CIDEMO_TERRAFORM_MODULE", str(module))
    render_site(site, chain.state, str(chain.site_path))
    workdir = chain.state.terraform_dir
    assert sorted(p.name for p in workdir.glob("*.tf")) == ["main.tf", "variables.tf"]
    driver = TerraformDriver(workdir)
    driver.init()
    addresses = allocate_public_addresses(
        site,
        chain.state,
        str(chain.site_path),
        driver,
        Reporter(quiet=True),
        yes=True,
        resource="terraform_data.floating_ip",
    )
    assert addresses == dict.fromkeys(NODE_IPS, "127.0.0.1")
    assert all(a.startswith("terraform_data.floating_ip") for a in driver.state_addresses())
    assert driver.plan(workdir / TFVARS_NAME).has_changes
    driver.apply_plan()
    outputs = driver.outputs()
    assert set(outputs) == {"nodes", "network_id", "security_group_ids", "floating_ips"}

    inventory = inventory_from_outputs(site, outputs, chain.state)
    assert {n.name: n.private_ip for n in inventory.nodes} == NODE_IPS
    assert {n.docker_url for n in inventory.nodes} == {f"tcp://127.0.0.1:{DOCKER_TLS_PORT}"}
    assert {n.engine for n in inventory.nodes} == set(NODE_IPS)
    inventory.save(chain.state.inventory_file)
    assert Inventory.load(chain.state.inventory_file) == inventory

    lifecycle.place_services(site, chain.state, Reporter(quiet=True), dry_run=False, lock_wait=0)
    members = chain.engine.containers.list(filters={"label": "io.cidemo.role=galera"})
    assert len(members) == 3
    assert all(m.attrs["HostConfig"]["NetworkMode"] == "host" for m in members)

    smoke = run_cidemo(
        "smoke", "--json", "--site", str(chain.site_path), "--state-dir", str(chain.state.path)
    )
    report = json.loads(smoke.out)
    assert smoke.rc == 0, [c for c in report["checks"] if not c["passed"]]
    rows = {c["name"]: c for c in report["checks"]}
    assert "127.0.0.14:4006" in rows["proxy lb_rw registered"]["detail"]

    again = run_cidemo(
        "plan",
        "--json",
        "--site",
        str(chain.site_path),
        "--state-dir",
        str(chain.state.path),
        "--services-only",
    )
    assert again.rc == 0, again.err
    assert json.loads(again.out)["actions"] == []


def test_the_spare_engine_leaves_the_machines_docker0(chain: Chain) -> None:
    """A dockerd started with `--bridge none` deletes docker0, which the machine's own dockerd
    still uses (its default-bridge containers then cannot start until it restarts)."""
    if not chain.had_docker0:
        pytest.skip("this machine's dockerd has no docker0")
    assert link_exists("docker0")
