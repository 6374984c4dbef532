"""The cloud package's pure logic: rule count against the module, quota needs, matching, waits."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from openstack import exceptions as sdk

from cidemo_infra.cloud import (
    connect,
    quota_needs,
    security_group_rule_count,
    sweep,
    wait_for_port,
)
from cidemo_infra.cloud.preflight import (
    CLUSTER_PORTS,
    DEIS_BUILDER_PORTS,
    PUBLIC_WORLD_TCP_PORTS,
    FlavorSize,
    Need,
    PreflightError,
    Quota,
    fitting_flavors,
    flavor_problems,
    image_problems,
    quota_problems,
    same_public_key,
    terraform_keypairs,
)
from cidemo_infra.cloud.sweep import Leak, SweepError, belongs
from cidemo_infra.cloud.waits import wait_for_servers
from cidemo_infra.data import TERRAFORM_MODULE
from cidemo_infra.errors import CloudError
from cidemo_infra.site import Site
from tests.support.tfschema import load_hcl

pytestmark = pytest.mark.unit

SECURITY_TF = TERRAFORM_MODULE / "security.tf"
FLAVORS = {
    f.name: f
    for f in (
        FlavorSize("m1.tiny", 64, 1, 1),
        FlavorSize("m1.small", 2048, 1, 20),
        FlavorSize("m1.medium", 4096, 2, 40),
        FlavorSize("m1.large", 8192, 4, 80),
    )
}


def site(**changes: Any) -> Site:
    data: dict[str, Any] = {
        "name": "demo",
        "target": "openstack",
        "cloud": "test",
        "ssh": {"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE8 demo"},
        "roles": {
            "deis": {"flavor": "m1.medium", "image": "flatcar", "min_ram_mb": 4096},
            "standalone": {"flavor": "m1.small", "image": "flatcar"},
        },
    }
    data.update(changes)
    return Site.model_validate(data)


def module_security() -> tuple[dict[str, Any], dict[str, Any]]:
    parsed = load_hcl(SECURITY_TF)
    local: dict[str, Any] = {}
    for block in parsed["locals"]:
        local.update(block)
    rules: dict[str, Any] = {}
    for block in parsed["resource"]:
        rules.update(block.get("openstack_networking_secgroup_rule_v2", {}))
    return local, rules


def test_the_rule_tables_are_the_modules() -> None:
    local, _ = module_security()

    assert local["public_world_tcp_ports"] == PUBLIC_WORLD_TCP_PORTS
    assert local["deis_builder_ports"] == DEIS_BUILDER_PORTS
    module_cluster = {k: (v["protocol"], v["port"]) for k, v in local["cluster_ports"].items()}
    assert module_cluster == CLUSTER_PORTS


def test_the_module_has_exactly_the_counted_rule_resources() -> None:
    _, rules = module_security()

    for_each = {name: body["for_each"] for name, body in rules.items()}

    assert for_each == {
        "public_world": "${merge(local.public_world_tcp_ports, var.deis_builder ? "
        "local.deis_builder_ports : {})}",
        "public_ssh": "${toset(local.ssh_sources)}",
        "cluster_internal": "${merge(local.cluster_ports, var.registry_port > 0 ? "
        "local.registry_ports : {})}",
        "cluster_docker_tls_admin": "${toset(var.admin_cidrs)}",
    }
    local, _ = module_security()
    assert "var.admin_cidrs" in local["ssh_sources"] and "0.0.0.0/0" in local["ssh_sources"]


@pytest.mark.parametrize(
    ("admins", "ssh", "docker_tls"),
    [
        ([], 1, 0),
        (["203.0.113.0/24"], 1, 1),
        (["203.0.113.0/24", "198.51.100.0/24"], 2, 2),
        (["203.0.113.0/24", "203.0.113.0/24"], 1, 1),
    ],
)
def test_rule_count_follows_admin_cidrs(admins: list[str], ssh: int, docker_tls: int) -> None:
    expected = len(PUBLIC_WORLD_TCP_PORTS) + ssh + len(CLUSTER_PORTS) + docker_tls

    assert security_group_rule_count(site(admin_cidrs=admins)) == expected


def test_only_a_site_with_a_registry_counts_its_rule() -> None:
    builds = site(environments={"app": "guestbook", "build": {"test_command": ["true"]}})

    assert security_group_rule_count(builds) == security_group_rule_count(site()) + 1


def test_only_a_deis_site_counts_the_builder_rule() -> None:
    flatcar, legacy = site(), site(node_os="coreos-legacy")

    assert security_group_rule_count(legacy) == security_group_rule_count(flatcar) + 1


def amounts(needs: list[Need]) -> dict[str, int]:
    return {n.quota: n.amount for n in needs}


def test_a_new_site_needs_every_quota() -> None:
    s = site()
    rules = security_group_rule_count(s)

    assert amounts(quota_needs(s, FLAVORS)) == {
        "instances": 4,
        "cores": 3 * 2 + 1,
        "ram": 3 * 4096 + 2048,
        "server_groups": 1,
        "server_group_members": 3,
        "floating_ips": 4,
        "ports": 4 + 2,
        "security_groups": 2,
        "security_group_rules": rules + 2 * 2,
        "networks": 1,
        "subnets": 1,
        "routers": 1,
        "keypairs": 1,
    }


def test_an_existing_network_needs_no_network_router_or_their_ports() -> None:
    needs = amounts(quota_needs(site(network={"existing_network": "shared"}), FLAVORS))

    assert needs["ports"] == 4
    assert not {"networks", "subnets", "routers"} & set(needs)


def test_what_already_exists_needs_no_new_quota() -> None:
    s = site()
    existing = {("server", f"demo-{n.name}") for n in s.nodes}
    existing |= {("floating_ip", f"demo-{n.name}") for n in s.nodes}
    existing |= {("port", f"demo-{n.name}") for n in s.nodes}
    existing |= {("network", "demo-net"), ("subnet", "demo-subnet"), ("router", "demo-router")}
    existing |= {("security_group", "demo-public"), ("security_group", "demo-cluster")}
    existing |= {("server_group", "demo-deis")}

    assert quota_needs(s, FLAVORS, existing, keypair_exists=True) == []

    half = existing - {("server", "demo-deis-2"), ("port", "demo-deis-2")}
    assert amounts(quota_needs(s, FLAVORS, half, keypair_exists=True)) == {
        "instances": 1,
        "cores": 2,
        "ram": 4096,
        "server_group_members": 3,
        "ports": 1,
    }


def test_cores_and_ram_name_the_flavor_keys() -> None:
    needs = {n.quota: n for n in quota_needs(site(), FLAVORS)}

    assert needs["cores"].key == "roles.deis.flavor, roles.standalone.flavor"
    assert needs["instances"].key == "nodes"


def test_quota_problems_only_where_the_quota_is_short() -> None:
    needs = [Need("instances", 4, "nodes", "4 servers"), Need("ports", 6, "nodes", "ports")]
    quotas = {"instances": Quota(5, 3, 0), "ports": Quota(-1, 100)}

    problems = quota_problems(needs, quotas, "project 'p' on cloud 'c'")

    assert problems == [
        "nodes: needs 4 more instances (4 servers); project 'p' on cloud 'c' has 2 left "
        "(quota 5, in use 3)"
    ]
    assert quota_problems(needs, {"instances": Quota(10, 6)}, "x") == []
    reserved = quota_problems(needs, {"instances": Quota(5, 0, 3)}, "x")
    assert reserved[0].endswith("(quota 5, in use 0, reserved 3)")


def test_fitting_flavors_smallest_first() -> None:
    assert fitting_flavors(FLAVORS.values(), 2048, 20, 1) == ["m1.small", "m1.medium", "m1.large"]
    assert fitting_flavors(FLAVORS.values(), 4096, 30, 2) == ["m1.medium", "m1.large"]
    assert fitting_flavors(FLAVORS.values(), 16384, 20, 1) == []


def test_public_keys_compare_without_the_comment() -> None:
    assert same_public_key("ssh-ed25519 AAAA alice@a", "ssh-ed25519 AAAA bob@b")
    assert not same_public_key("ssh-ed25519 AAAA", "ssh-ed25519 AAAB")
    assert not same_public_key("", "ssh-ed25519 AAAA")


def ns(**values: Any) -> SimpleNamespace:
    return SimpleNamespace(**values)


def images(*items: dict[str, Any]) -> list[SimpleNamespace]:
    base = {"status": "active", "min_disk": 0, "min_ram": 0}
    return [ns(**(base | item)) for item in items]


def test_image_problems_say_what_the_cloud_offers() -> None:
    cloud_images = images(
        {"id": "i1", "name": "flatcar-old"},
        {"id": "i2", "name": "dup"},
        {"id": "i3", "name": "dup"},
        {"id": "i4", "name": "queued", "status": "queued"},
    )

    def problems(deis: str, standalone: str) -> list[str]:
        roles = {"deis": {"flavor": "m1.medium", "image": deis, "min_ram_mb": 4096}}
        roles["standalone"] = {"flavor": "m1.small", "image": standalone}
        return image_problems(site(roles=roles), cloud_images, "c")

    missing, by_id = problems("flatcar", "i1")
    assert missing == "roles.deis.image: no image 'flatcar'; images on cloud 'c': dup, flatcar-old"
    assert by_id.startswith("roles.standalone.image: 'i1' is the ID of image 'flatcar-old'")
    dup, queued = problems("dup", "queued")
    assert dup.startswith("roles.deis.image: 2 images are named 'dup'")
    assert queued.startswith("roles.standalone.image: image 'queued' is queued, not active")


def test_flavor_problems_name_the_fitting_flavors_and_image_minimums() -> None:
    roles = {
        "deis": {"flavor": "m1.huge", "image": "big", "min_ram_mb": 4096},
        "standalone": {"flavor": "m1.tiny", "image": "big", "min_ram_mb": 2048},
    }
    big = images({"id": "b", "name": "big", "min_disk": 10, "min_ram": 128})[0]

    missing, small, disk, ram = flavor_problems(site(roles=roles), FLAVORS, {"big": big}, "c")

    assert missing.startswith("roles.deis.flavor: no flavor 'm1.huge' on cloud 'c'; flavors: ")
    assert "m1.medium (4096 MB, 2 vCPU, 40 GB)" in missing
    assert small.startswith("roles.standalone.flavor: 'm1.tiny' has only 64 MB RAM, 1 GB disk;")
    assert small.endswith("flavors that fit: m1.small, m1.medium, m1.large")
    assert disk == (
        "roles.standalone.flavor: 'm1.tiny' has 1 GB disk, image 'big' needs min_disk 10 GB"
    )
    assert ram.startswith("roles.standalone.flavor: 'm1.tiny' has 64 MB RAM, image 'big' needs")


def test_preflight_error_is_the_first_line_and_a_count() -> None:
    assert str(PreflightError(["a: x"])) == "a: x"
    err = PreflightError(["a: x", "b: y", "c: z"])
    assert str(err) == "a: x (+2 more)"
    assert err.problems == ["a: x", "b: y", "c: z"]
    assert isinstance(err, CloudError) and err.exit_code == 1


@pytest.mark.parametrize(
    ("name", "tags", "owner", "expected"),
    [
        ("demo-net", [], None, True),
        ("demo", [], None, False),
        ("demox-net", [], None, False),
        ("other-net", ["cidemo-site-demo"], None, True),
        (None, ["cidemo", "cidemo-site-demo"], None, True),
        ("demo-2-net", ["cidemo-site-demo-2"], None, False),
        ("demo-net", ["cidemo"], None, True),
        ("demo-web", [], "other", False),
        ("web", [], "demo", True),
    ],
)
def test_belongs_by_prefix_unless_another_site_claims_it(
    name: str | None, tags: list[str], owner: str | None, expected: bool
) -> None:
    assert belongs("demo", name, tags, owner) is expected


def test_sweep_error_names_the_first_failure() -> None:
    leak = Leak("network", "n1", "demo-net")
    err = SweepError("demo", [(leak, "in use"), (Leak("router", "r1", "demo-router"), "409")])

    assert str(err) == (
        "site 'demo': 2 resource(s) could not be deleted: network demo-net (n1): in use (+1 more)"
    )


def test_wait_for_port_returns_once_something_listens() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        wait_for_port("127.0.0.1", listener.getsockname()[1], timeout=5)


def test_wait_for_port_gives_up_with_the_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(CloudError, match=rf"127.0.0.1:{port}: no TCP connection within 1s"):
            wait_for_port("127.0.0.1", port, timeout=1, interval=0.2)


class FakeCompute:
    """`servers()` returns the next snapshot each poll; the last one repeats."""

    def __init__(self, *snapshots: list[SimpleNamespace]) -> None:
        self.snapshots = list(snapshots)

    def servers(self, details: bool = True) -> list[SimpleNamespace]:
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]

    def get_server(self, server_id: str) -> SimpleNamespace:
        return SimpleNamespace(fault={"message": "No valid host was found.", "code": 500})


def server(name: str, status: str) -> SimpleNamespace:
    return SimpleNamespace(id=f"id-{name}", name=name, status=status, fault=None)


def fake_conn(*snapshots: list[SimpleNamespace]) -> Any:
    return SimpleNamespace(compute=FakeCompute(*snapshots))


def test_wait_for_servers_reports_progress_until_all_are_active() -> None:
    conn = fake_conn(
        [server("a", "BUILD")],
        [server("a", "ACTIVE"), server("b", "BUILD"), server("other", "ERROR")],
        [server("a", "ACTIVE"), server("b", "ACTIVE")],
    )
    seen: list[tuple[str, str]] = []

    ready = wait_for_servers(
        conn, ["a", "b"], timeout=5, progress=lambda n, s: seen.append((n, s)), interval=0
    )

    assert sorted(ready) == ["a", "b"]
    assert seen == [
        ("a", "BUILD"),
        ("b", "MISSING"),
        ("a", "ACTIVE"),
        ("b", "BUILD"),
        ("b", "ACTIVE"),
    ]


def test_wait_for_servers_names_the_server_in_error_and_its_fault() -> None:
    conn = fake_conn([server("a", "ACTIVE"), server("b", "ERROR")])

    with pytest.raises(CloudError, match=r"^server 'b' is in ERROR: No valid host was found\."):
        wait_for_servers(conn, ["a", "b"], timeout=5, interval=0)


def test_wait_for_servers_times_out_naming_the_late_ones() -> None:
    conn = fake_conn([server("a", "ACTIVE"), server("b", "BUILD")])

    with pytest.raises(
        CloudError, match=r"servers not ACTIVE after 0s: b \(BUILD\), c \(MISSING\)"
    ):
        wait_for_servers(conn, ["a", "b", "c"], timeout=0.2, interval=0.05)


def test_wait_for_servers_refuses_two_servers_of_one_name() -> None:
    conn = fake_conn([server("a", "ACTIVE"), server("a", "BUILD")])

    with pytest.raises(CloudError, match=r"server 'a': 2 servers have this name"):
        wait_for_servers(conn, ["a"], timeout=5, interval=0)


def write_clouds(path: Path, auth_url: str) -> None:
    path.write_text(
        "clouds:\n"
        "  down:\n"
        "    auth:\n"
        f"      auth_url: {auth_url}\n"
        "      username: u\n"
        "      password: s3cret-pw-never-shown\n"
        "      project_name: p\n"
        "      user_domain_name: Default\n"
        "      project_domain_name: Default\n"
    )


def test_connect_to_an_unreachable_identity_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        write_clouds(tmp_path / "clouds.yaml", f"http://127.0.0.1:{port}/v3")
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))

        with pytest.raises(CloudError) as err:
            connect("down")

    message = str(err.value)
    assert message.startswith(
        f"cloud 'down': cannot reach the identity endpoint http://127.0.0.1:{port}/v3"
    )
    assert "s3cret" not in message


def test_connect_to_a_cloud_missing_from_clouds_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_clouds(tmp_path / "clouds.yaml", "http://127.0.0.1:9/v3")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))

    with pytest.raises(CloudError, match=r"^cloud 'nope': no such entry in clouds.yaml \(OS_CLI"):
        connect("nope")


class FakeCloud:
    """Just enough of openstacksdk for the sweep: lists, deletes, and a log of the calls."""

    def __init__(self, stuck: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.stuck = stuck or set()
        self.current_project_id = "p1"
        self.config = SimpleNamespace(name="fake", auth={"password": "pw"})
        r = {
            "tags": [],
            "description": None,
            "device_owner": "",
            "metadata": {},
            "status": "ACTIVE",
        }
        self.items: dict[str, list[SimpleNamespace]] = {
            "server": [ns(**(r | {"id": "s1", "name": "demo-deis-1"}))],
            "ip": [
                ns(**(r | {"id": "f1", "name": "172.24.4.5", "description": "demo-deis-1"})),
                ns(**(r | {"id": "f2", "name": "172.24.4.6", "description": "other-deis-1"})),
            ],
            "port": [
                ns(**(r | {"id": "p1", "name": "demo-deis-1"})),
                ns(**(r | {"id": "p2", "name": "", "device_owner": "network:router_interface"})),
            ],
            "router": [ns(**(r | {"id": "r1", "name": "demo-router"}))],
            "subnet": [ns(**(r | {"id": "sn1", "name": "demo-subnet"}))],
            "network": [
                ns(**(r | {"id": "n1", "name": "demo-net"})),
                ns(**(r | {"id": "n2", "name": "demo-x", "tags": ["cidemo-site-demo-x"]})),
            ],
            "security_group": [ns(**(r | {"id": "g1", "name": "demo-public"}))],
            "server_group": [ns(**(r | {"id": "sg1", "name": "demo-deis"}))],
            "keypair": [ns(id="demo-key", name="demo-key"), ns(id="op-key", name="op-key")],
        }
        self.compute = SimpleNamespace(
            servers=lambda details=True: self._list("server"),
            server_groups=lambda: self._list("server_group"),
            keypairs=lambda: self._list("keypair"),
            delete_server=lambda i: self._delete("server", i),
            delete_server_group=lambda i: self._delete("server_group", i),
            delete_keypair=lambda i: self._delete("keypair", i),
        )
        self.network = SimpleNamespace(
            ips=lambda project_id: self._list("ip"),
            ports=lambda project_id=None, device_id=None: [
                p for p in self._list("port") if device_id is None or p.id == "p2"
            ],
            routers=lambda project_id: self._list("router"),
            subnets=lambda project_id: self._list("subnet"),
            networks=lambda project_id: self._list("network"),
            security_groups=lambda project_id: self._list("security_group"),
            delete_ip=lambda i: self._delete("ip", i),
            delete_port=lambda i: self._delete("port", i),
            remove_interface_from_router=lambda r, port: self._delete("port", port),
            delete_router=lambda i, ignore_missing: self._delete("router", i),
            delete_subnet=lambda i: self._delete("subnet", i),
            delete_network=lambda i: self._delete("network", i),
            delete_security_group=lambda i: self._delete("security_group", i),
        )

    def endpoint_for(self, service_type: str) -> None:
        return None

    def _list(self, kind: str) -> list[SimpleNamespace]:
        return list(self.items[kind])

    def _delete(self, kind: str, item_id: str) -> None:
        self.calls.append(item_id)
        if item_id in self.stuck:
            raise sdk.ConflictException(f"{kind} {item_id} is in use")
        self.items[kind] = [i for i in self.items[kind] if i.id != item_id]


def test_sweep_deletes_in_dependency_order_and_only_the_site() -> None:
    cloud = FakeCloud()

    found = sweep(cloud, "demo", delete=True, key_name="demo-key", timeout=5)

    site_ids = ["s1", "f1", "p1", "r1", "sn1", "n1", "g1", "sg1", "demo-key"]
    assert [leak.id for leak in found] == site_ids
    assert cloud.calls == ["s1", "f1", "p1", "p2", "r1", "sn1", "n1", "g1", "sg1", "demo-key"]
    left = {i.id for items in cloud.items.values() for i in items}
    assert left == {"f2", "n2", "op-key"}


def test_sweep_reports_what_stays_in_use() -> None:
    cloud = FakeCloud(stuck={"n1"})

    with pytest.raises(SweepError) as err:
        sweep(cloud, "demo", delete=True, timeout=0.5)

    assert [(leak.id, why) for leak, why in err.value.failures] == [("n1", "network n1 is in use")]
    assert str(err.value).startswith("site 'demo': 1 resource(s) could not be deleted: network")


def test_terraform_keypairs_reads_the_managed_keypairs_of_a_state(tmp_path: Path) -> None:
    assert terraform_keypairs(tmp_path) == set()
    (tmp_path / "terraform.tfstate").write_text(
        json.dumps(
            {
                "version": 4,
                "resources": [
                    {
                        "mode": "managed",
                        "type": "openstack_compute_keypair_v2",
                        "name": "site",
                        "instances": [{"attributes": {"name": "demo-deis"}}],
                    },
                    {
                        "mode": "data",
                        "type": "openstack_compute_keypair_v2",
                        "name": "other",
                        "instances": [{"attributes": {"name": "someone-elses"}}],
                    },
                    {
                        "mode": "managed",
                        "type": "openstack_networking_network_v2",
                        "name": "net",
                        "instances": [{"attributes": {"name": "demo-net"}}],
                    },
                ],
            }
        )
    )
    assert terraform_keypairs(tmp_path) == {"demo-deis"}
    (tmp_path / "terraform.tfstate").write_text("{not json")
    with pytest.raises(CloudError, match=r"terraform\.tfstate: unreadable"):
        terraform_keypairs(tmp_path)
