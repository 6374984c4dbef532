"""The OpenStack Terraform module: formatting, what validate does not check, the security contract.

`terraform validate` with the real provider checks every type and argument
(tests/integration/test_terraform_validate.py); these tests need no provider.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cidemo_infra.data import TERRAFORM_MODULE
from tests.support.tfschema import Finding, check_module, labelled, load_hcl

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = TERRAFORM_MODULE
SCHEMA = json.loads((REPO / "tests/data/terraform-provider-openstack.json").read_text())

WORLD = {"0.0.0.0/0", "::/0"}
RULE_FIELDS = (
    "security_group_id",
    "direction",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
)
CLUSTER_GROUP = "openstack_networking_secgroup_v2.cluster.id"
PUBLIC_GROUP = "openstack_networking_secgroup_v2.public.id"
ADMINS = ["203.0.113.0/24", "2001:db8::/48"]
CLUSTER_PORTS = {
    ("tcp", 2379),
    ("tcp", 2380),
    ("tcp", 3306),
    ("tcp", 4444),
    ("tcp", 4567),
    ("tcp", 4568),
    ("udp", 8472),
    ("tcp", 2377),
    ("tcp", 7946),
    ("udp", 7946),
    ("udp", 4789),
    ("tcp", 2376),
    ("tcp", 4006),
    ("tcp", 4008),
    ("tcp", 8080),
}
CONTRACT_VARIABLES = {
    "site_name",
    "cloud",
    "network_cidr",
    "existing_network",
    "external_network",
    "dns_nameservers",
    "admin_cidrs",
    "keypair_name",
    "ssh_public_key",
    "nodes",
    "tags",
    "deis_server_group_policy",
    "deis_builder",
    "registry_port",
}
CREDENTIAL_ARGUMENTS = {
    name
    for name in SCHEMA["provider"]["block"]["attributes"]
    if re.search(r"password|token|secret|credential|user_|tenant|auth_url|^key$|^cert$", name)
}


def parsed_module(module_dir: Path = MODULE_DIR) -> dict[str, dict[str, Any]]:
    """All files of a module merged: {"resource": {"type.name": body}, "locals": {...}, ...}."""
    merged: dict[str, dict[str, Any]] = {}
    for path in sorted(module_dir.glob("*.tf")):
        for kind, entries in load_hcl(path).items():
            section = merged.setdefault(kind, {})
            if kind == "locals":
                for entry in entries:
                    section.update({k: v for k, v in entry.items() if not k.startswith("__")})
            elif kind != "terraform":
                section.update(labelled(entries))
    return merged


MODULE = parsed_module()


def resolve(value: Any, scope: dict[str, Any]) -> Any:
    """Evaluate the few expression forms the module uses; anything else fails loudly."""
    if not isinstance(value, str) or not value.startswith("${"):
        return value
    return evaluate(value[2:-1].strip(), scope)


def evaluate(expr: str, scope: dict[str, Any]) -> Any:
    if match := re.fullmatch(r"merge\((\S+), (.+)\)", expr):
        return {**evaluate(match[1], scope), **evaluate(match[2], scope)}
    if expr == "{}":
        return {}
    if match := re.fullmatch(r"(.+?) \? (.+) : (.+)", expr):
        branch = match[2] if evaluate(match[1], scope) else match[3]
        return evaluate(branch, scope)
    if match := re.fullmatch(r"length\((.+)\) > 0", expr):
        return len(evaluate(match[1], scope)) > 0
    if match := re.fullmatch(r"([\w.]+) > (\d+)", expr):
        return int(evaluate(match[1], scope)) > int(match[2])
    if match := re.fullmatch(r'(.+) == "(.*)"', expr):
        return evaluate(match[1], scope) == match[2]
    if match := re.fullmatch(r"toset\((.+)\)", expr):
        return list(dict.fromkeys(evaluate(match[1], scope)))
    if match := re.fullmatch(r"\[(.*)\]", expr):
        return [evaluate(item.strip(), scope) for item in match[1].split(",") if item.strip()]
    if re.fullmatch(r'"[^"$]*"', expr) or re.fullmatch(r"\d+", expr):
        return json.loads(expr)
    if re.fullmatch(r"[\w.\[\]]+", expr):
        head, *rest = expr.split(".")
        if head not in scope:
            return expr
        found = scope[head]
        for part in rest:
            found = resolve(found[part], scope)
        return found
    raise AssertionError(f"the contract tests cannot evaluate {expr!r}; extend evaluate()")


@dataclass(frozen=True)
class Rule:
    address: str
    group: str
    direction: str
    protocol: str
    port_min: int
    port_max: int
    source: str


def expand_rules(
    admin_cidrs: list[str], deis_builder: bool = False, registry_port: int = 0
) -> list[Rule]:
    """Every security-group rule the module creates for these admin CIDRs."""
    scope = {
        "var": {
            "admin_cidrs": admin_cidrs,
            "site_name": "demo",
            "deis_builder": deis_builder,
            "registry_port": registry_port,
        },
        "local": MODULE["locals"],
    }
    rules = []
    for address, body in MODULE["resource"].items():
        if not address.startswith("openstack_networking_secgroup_rule_v2."):
            continue
        assert "count" not in body, f"{address}: use for_each so the rules can be read here"
        collection = resolve(body.get("for_each", [None]), scope)
        items = collection.items() if isinstance(collection, dict) else [(v, v) for v in collection]
        for key, value in items:
            each = {**scope, "each": {"key": key, "value": value}}
            field = {name: resolve(body.get(name), each) for name in RULE_FIELDS}
            assert not (field.get("remote_ip_prefix") and field.get("remote_group_id")), address
            source = field.get("remote_ip_prefix") or field.get("remote_group_id") or "0.0.0.0/0"
            rules.append(
                Rule(
                    address,
                    field["security_group_id"],
                    field["direction"],
                    field["protocol"],
                    field["port_range_min"],
                    field["port_range_max"],
                    source,
                )
            )
    return rules


def sources(rules: list[Rule], protocol: str, port: int) -> set[str]:
    return {r.source for r in rules if r.protocol == protocol and r.port_min <= port <= r.port_max}


def errors(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.severity == "error"]


def terraform_fmt_check(directory: Path) -> subprocess.CompletedProcess[str]:
    binary = os.environ.get("TF_BINARY", "terraform")
    if shutil.which(binary) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not on PATH; the unit tier needs it for fmt")
        pytest.skip(f"{binary} is not on PATH")
    command = [binary, "fmt", "-check", "-recursive", "-diff", str(directory)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_shipped_module_uses_no_removed_type_and_requires_provider_3x() -> None:
    assert errors(check_module(MODULE_DIR, SCHEMA)) == []


def test_shipped_module_is_terraform_fmt_clean() -> None:
    result = terraform_fmt_check(MODULE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fmt_check_fails_on_a_badly_formatted_module(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('locals {\nx = "a"\n  longer_name = "b"\n}\n')
    assert terraform_fmt_check(tmp_path).returncode != 0


VERSIONS_TF = """
terraform {
  required_providers {
    openstack = {
      source  = "terraform-provider-openstack/openstack"
      version = ">= 3.0, < 4.0"
    }
  }
}

provider "openstack" {
  cloud = var.cloud
}
"""
GOOD_INSTANCE = """
resource "openstack_compute_instance_v2" "node" {
  name = "demo-node"
  network {
    port = "p"
  }
}
"""


def findings_for(tmp_path: Path, main_tf: str, versions_tf: str = VERSIONS_TF) -> list[Finding]:
    (tmp_path / "versions.tf").write_text(versions_tf)
    (tmp_path / "main.tf").write_text(main_tf)
    return check_module(tmp_path, SCHEMA)


def test_minimal_good_module_passes(tmp_path: Path) -> None:
    assert findings_for(tmp_path, GOOD_INSTANCE) == []


BAD_MODULES = {  # validate says only "not supported"; these name the replacement
    "removed secgroup": (
        'resource "openstack_compute_secgroup_v2" "old" {\n  name = "x"\n}\n',
        "main.tf: resource openstack_compute_secgroup_v2.old",
        "removed in 3.0.0: use openstack_networking_secgroup_v2 instead",
    ),
    "removed floating-ip association": (
        'resource "openstack_compute_floatingip_associate_v2" "old" {\n'
        '  floating_ip = "1.2.3.4"\n  instance_id = "i"\n}\n',
        "resource openstack_compute_floatingip_associate_v2.old",
        "use openstack_networking_floatingip_associate_v2 instead",
    ),
    "removed data source": (
        'data "openstack_blockstorage_volume_v2" "old" {\n  name = "x"\n}\n',
        "data openstack_blockstorage_volume_v2.old",
        "use openstack_blockstorage_volume_v3 instead",
    ),
}


@pytest.mark.parametrize(("main_tf", "where", "message"), BAD_MODULES.values(), ids=BAD_MODULES)
def test_checker_reports_a_bad_module(
    tmp_path: Path, main_tf: str, where: str, message: str
) -> None:
    found = errors(findings_for(tmp_path, main_tf))
    assert any(where in f.where and message in f.message for f in found), found


BAD_VERSIONS = {
    "wrong source": VERSIONS_TF.replace("terraform-provider-openstack/openstack", "hashicorp/x"),
    "admits 2.x": VERSIONS_TF.replace(">= 3.0, < 4.0", ">= 1.0, < 4.0"),
    "excludes 3.4.0": VERSIONS_TF.replace(">= 3.0, < 4.0", "~> 3.3.0"),
    "admits 4.x": VERSIONS_TF.replace(">= 3.0, < 4.0", ">= 3.0"),
    "no required_providers": 'provider "openstack" {\n  cloud = var.cloud\n}\n',
}


@pytest.mark.parametrize("versions_tf", BAD_VERSIONS.values(), ids=BAD_VERSIONS)
def test_checker_reports_a_bad_provider_requirement(tmp_path: Path, versions_tf: str) -> None:
    found = errors(findings_for(tmp_path, GOOD_INSTANCE, versions_tf))
    assert [f.where for f in found if f.where.split(": ")[-1].startswith("terraform")], found


@pytest.mark.parametrize("admin_cidrs", [[], ADMINS], ids=["no admins", "admins"])
@pytest.mark.parametrize("deis_builder", [False, True], ids=["swarm", "deis"])
def test_world_reaches_only_ssh_http_https_and_git_on_deis(
    admin_cidrs: list[str], deis_builder: bool
) -> None:
    rules = expand_rules(admin_cidrs, deis_builder)
    assert {r.direction for r in rules} == {"ingress"}
    assert all(r.port_min == r.port_max for r in rules), "no port ranges"
    from_world = {(r.protocol, r.port_min) for r in rules if r.source in WORLD}
    git = {("tcp", 2222)} if deis_builder else set()
    assert from_world <= {("tcp", 22), ("tcp", 80), ("tcp", 443), *git}
    assert {("tcp", 80), ("tcp", 443), *git} <= from_world
    assert {r.group for r in rules if r.source in WORLD} == {PUBLIC_GROUP}


def test_the_deis_builder_port_is_closed_where_no_builder_runs() -> None:
    """Port 2222 is git push to Deis v1's builder; on the swarm platform nothing listens there."""
    assert not sources(expand_rules(ADMINS, deis_builder=False), "tcp", 2222)
    assert sources(expand_rules(ADMINS, deis_builder=True), "tcp", 2222) == {"0.0.0.0/0"}
    addresses = {r.address for r in expand_rules([], deis_builder=True) if r.port_min == 2222}
    assert addresses == {"openstack_networking_secgroup_rule_v2.public_world"}


def test_ssh_comes_from_the_admin_cidrs_when_given() -> None:
    assert sources(expand_rules(ADMINS), "tcp", 22) == set(ADMINS)


def test_ssh_falls_back_to_the_world_only_without_admin_cidrs() -> None:
    assert MODULE["locals"]["ssh_sources"] == (
        '${length(var.admin_cidrs) > 0 ? var.admin_cidrs : ["0.0.0.0/0"]}'
    )
    assert sources(expand_rules([]), "tcp", 22) == {"0.0.0.0/0"}


@pytest.mark.parametrize(("protocol", "port"), sorted(CLUSTER_PORTS))
def test_cluster_ports_come_from_the_cluster_group(protocol: str, port: int) -> None:
    rules = [r for r in expand_rules(ADMINS) if (r.protocol, r.port_min) == (protocol, port)]
    assert any(r.group == CLUSTER_GROUP and r.source == CLUSTER_GROUP for r in rules)
    assert not WORLD & {r.source for r in rules}


def test_the_registry_port_is_open_between_the_nodes_only_where_a_registry_is_placed() -> None:
    assert not [r for r in expand_rules(ADMINS) if r.port_min in (0, 5000)]
    rules = [r for r in expand_rules(ADMINS, registry_port=5123) if r.port_min == 5123]
    assert [(r.protocol, r.group, r.source) for r in rules] == [
        ("tcp", CLUSTER_GROUP, CLUSTER_GROUP)
    ]


@pytest.mark.parametrize("admin_cidrs", [[], ADMINS], ids=["no admins", "admins"])
def test_docker_tls_comes_from_the_cluster_and_the_admins_only(admin_cidrs: list[str]) -> None:
    assert sources(expand_rules(admin_cidrs), "tcp", 2376) == {CLUSTER_GROUP, *admin_cidrs}


def test_security_groups_are_named_and_keep_default_egress() -> None:
    groups = {
        address: body
        for address, body in MODULE["resource"].items()
        if address.startswith("openstack_networking_secgroup_v2.")
    }
    assert {a: b["name"] for a, b in groups.items()} == {
        "openstack_networking_secgroup_v2.public": "${var.site_name}-public",
        "openstack_networking_secgroup_v2.cluster": "${var.site_name}-cluster",
    }
    assert not any(body.get("delete_default_rules") for body in groups.values())


def test_deis_nodes_share_an_anti_affinity_server_group() -> None:
    group = MODULE["resource"]["openstack_compute_servergroup_v2.deis"]
    assert (group["name"], group["policies"]) == (
        "${var.site_name}-deis",
        ["${var.deis_server_group_policy}"],
    )
    [hints] = MODULE["resource"]["openstack_compute_instance_v2.node"]["dynamic"]
    body = hints["scheduler_hints"]
    assert body["content"][0]["group"] == "${scheduler_hints.value}"
    for role, expected in (
        ("deis", ["openstack_compute_servergroup_v2.deis.id"]),
        ("standalone", []),
    ):
        assert resolve(body["for_each"], {"each": {"value": {"role": role}}}) == expected


def test_provider_takes_only_the_cloud_name() -> None:
    provider = MODULE["provider"]["openstack"]
    assert {k: v for k, v in provider.items() if not k.startswith("__")} == {
        "cloud": "${var.cloud}"
    }


def test_no_credentials_anywhere_in_the_module() -> None:
    def keys(value: Any) -> set[str]:
        if isinstance(value, dict):
            return set(value).union(*(keys(item) for item in value.values()))
        if isinstance(value, list):
            return set().union(*(keys(item) for item in value))
        return set()

    assert CREDENTIAL_ARGUMENTS and not keys(MODULE) & (CREDENTIAL_ARGUMENTS | {"admin_pass"})


def test_floating_ips_use_the_networking_resources() -> None:
    associate = MODULE["resource"]["openstack_networking_floatingip_associate_v2.node"]
    assert (
        associate["floating_ip"] == "${openstack_networking_floatingip_v2.node[each.key].address}"
    )
    assert associate["port_id"] == "${openstack_networking_port_v2.node[each.key].id}"
    pool = MODULE["resource"]["openstack_networking_floatingip_v2.node"]["pool"]
    assert pool == "${var.external_network}"
    used = {address.split(".")[0] for address in MODULE["resource"]}
    assert not used & set(SCHEMA["x_removed_resource_types"])


def test_nodes_get_their_port_user_data_and_metadata() -> None:
    port = MODULE["resource"]["openstack_networking_port_v2.node"]
    assert port["fixed_ip"][0]["ip_address"] == "${each.value.private_ip}"
    assert set(port["security_group_ids"]) == {f"${{{PUBLIC_GROUP}}}", f"${{{CLUSTER_GROUP}}}"}
    instance = MODULE["resource"]["openstack_compute_instance_v2.node"]
    assert instance["network"][0]["port"] == "${openstack_networking_port_v2.node[each.key].id}"
    assert instance["user_data"] == "${file(each.value.user_data_file)}"
    assert instance["metadata"] == {
        "cidemo_site": "${var.site_name}",
        "cidemo_role": "${each.value.role}",
    }


@pytest.mark.parametrize(("existing", "created"), [("", 1), ("shared-net", 0)])
def test_network_is_created_only_without_an_existing_one(existing: str, created: int) -> None:
    scope = {"var": {"existing_network": existing}, "local": MODULE["locals"]}
    for kind, addresses in (
        (
            "resource",
            ["network_v2.site", "subnet_v2.site", "router_v2.site", "router_interface_v2.site"],
        ),
        ("data", ["network_v2.existing", "subnet_v2.existing"]),
    ):
        for address in addresses:
            count = resolve(MODULE[kind][f"openstack_networking_{address}"]["count"], scope)
            assert count == (created if kind == "resource" else 1 - created), address


def test_every_taggable_resource_is_tagged_and_named_after_the_site() -> None:
    for address, body in MODULE["resource"].items():
        attributes = SCHEMA["resource_schemas"][address.split(".")[0]]["block"]["attributes"]
        if "tags" in attributes:
            assert body.get("tags") == "${var.tags}", address
        if "name" in body and address != "openstack_compute_keypair_v2.site":
            assert body["name"].startswith("${var.site_name}-"), address


def test_variables_follow_the_rendered_tfvars_contract() -> None:
    variables = MODULE["variable"]
    assert set(variables) == CONTRACT_VARIABLES
    for name, body in variables.items():
        assert body.get("type") and body.get("description"), name
        assert "default" not in body, name


def test_outputs_follow_the_inventory_contract() -> None:
    outputs = MODULE["output"]
    assert set(outputs) == {"nodes", "network_id", "security_group_ids", "floating_ips"}
    assert set(outputs["security_group_ids"]["value"]) == {"public", "cluster"}
    node = re.search(r"=> \{(.*)\}\}$", outputs["nodes"]["value"])
    assert node, outputs["nodes"]["value"]
    fields = {item.split("=")[0].strip() for item in node[1].split(", ")}
    assert fields == {"name", "server_name", "role", "private_ip", "public_ip"}


def test_standin_module_outputs_have_the_real_modules_shape() -> None:
    """The chain test's stand-in must not drift from the module it stands in for."""

    def outputs(path: Path) -> dict[str, str]:
        return {name: str(body["value"]) for name, body in labelled(load_hcl(path)["output"])}

    real = outputs(TERRAFORM_MODULE / "outputs.tf")
    standin = outputs(REPO / "tests" / "data" / "terraform" / "standin-openstack" / "main.tf")
    assert set(standin) == set(real)
    for key in ("name", "server_name", "role", "private_ip", "public_ip"):
        assert key in real["nodes"] and key in standin["nodes"]
