"""The pure planner, driven by data: tests/unit/plans/<case>.yaml (site, observed, expected)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cidemo_infra.placement.plan import ObservedContainer, ObservedNetwork, diff
from cidemo_infra.placement.specs import (
    LABEL_SITE,
    LABEL_SPEC,
    desired_specs,
    image_refs,
    network_specs,
)
from cidemo_infra.site import parse_site
from cidemo_infra.targets.local import local_inventory

pytestmark = pytest.mark.unit
CASES = sorted((Path(__file__).parent / "plans").glob("*.yaml"))
IMAGES = {
    "etcd": "cidemo/etcd:t",
    "galera": "cidemo/galera:t",
    "dbproxy": "cidemo/dbproxy:t",
    "jenkins": "cidemo/jenkins-standin:t",
}


def _observed(case: dict[str, Any], specs, networks) -> tuple[list, list]:
    containers: list[ObservedContainer] = []
    nets: list[ObservedNetwork] = []
    if case["observed"] == "all-current":
        override = case.get("override", {})
        for spec in specs:
            o = override.get(spec.name, {})
            containers.append(
                ObservedContainer(
                    spec.name,
                    spec.engine,
                    spec.node,
                    spec.role,
                    o.get("spec", spec.spec_hash),
                    o.get("status", "running"),
                    o.get("exit_code", 0),
                )
            )
        nets = [ObservedNetwork(n.name, n.engine) for n in networks]
    for extra in case.get("extra", []):
        containers.append(ObservedContainer(spec_hash="x", **extra))
    nets += [ObservedNetwork(**n) for n in case.get("extra_networks", [])]
    return containers, nets


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_case(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    site = parse_site(yaml.safe_dump(case["site"]), path.name)
    specs = desired_specs(site, local_inventory(site), IMAGES)
    networks = network_specs(site)
    observed, observed_nets = _observed(case, specs, networks)
    actions = [
        a.as_dict() | {"engine": a.engine} for a in diff(specs, networks, observed, observed_nets)
    ]
    assert len(actions) == len(case["expected"]), actions
    for got, want in zip(actions, case["expected"], strict=True):
        assert {k: got[k] for k in want} == want


def test_second_plan_after_applying_the_first_is_empty() -> None:
    site = parse_site("name: p1")
    specs = desired_specs(site, local_inventory(site), IMAGES)
    observed = [
        ObservedContainer(s.name, s.engine, s.node, s.role, s.spec_hash, "running") for s in specs
    ]
    nets = [ObservedNetwork(n.name, n.engine) for n in network_specs(site)]
    assert diff(specs, network_specs(site), observed, nets) == []


def test_spec_hash_changes_with_the_image_and_labels_carry_no_secret() -> None:
    site = parse_site("name: p1")
    inv = local_inventory(site)
    a = desired_specs(site, inv, IMAGES)
    b = desired_specs(site, inv, {**IMAGES, "galera": "cidemo/galera:u"})
    assert [s.spec_hash for s in a if s.role == "galera"] != [
        s.spec_hash for s in b if s.role == "galera"
    ]
    assert [s.spec_hash for s in a if s.role == "dbproxy"] == [
        s.spec_hash for s in b if s.role == "dbproxy"
    ]
    for spec in a:
        assert set(spec.labels) >= {LABEL_SITE, LABEL_SPEC}
        assert not any(
            "password" in k.lower() or "password" in v.lower() for k, v in spec.labels.items()
        )
        assert not any("PASSWORD" in k for k, _ in spec.env)


def test_members_get_the_node_addresses_and_the_registration_layout_inputs() -> None:
    site = parse_site("name: p1")
    specs = desired_specs(site, local_inventory(site), IMAGES)
    members = [s for s in specs if s.role == "galera"]
    assert [s.ip for s in members] == ["10.213.7.10", "10.213.7.11", "10.213.7.12"]
    env = dict(members[0].env)
    assert env["CONTAINER_NAME"] == members[0].name == "cidemo-p1-galera-deis-1"
    assert env["ETCD_URL"] == "https://10.213.7.8:2379"
    assert env["NODE_ADDRESS"] == "10.213.7.10"
    # the automatic recovery counts positions only from these names
    assert env["EXPECTED_MEMBERS"] == "deis-1,deis-2,deis-3"
    assert (env["AUTO_RECOVERY"], env["RECOVERY_WAIT"]) == ("on", "120")


def test_auto_recovery_can_be_turned_off_by_the_site() -> None:
    site = parse_site("name: p1\nservices: {galera: {auto_recovery: false, recovery_wait: 45}}")
    member = next(
        s for s in desired_specs(site, local_inventory(site), IMAGES) if s.role == "galera"
    )
    assert (dict(member.env)["AUTO_RECOVERY"], dict(member.env)["RECOVERY_WAIT"]) == ("off", "45")


def test_a_maxscale_site_places_its_own_image_with_the_maxscale_kind() -> None:
    site = parse_site(
        "name: p1\nservices: {proxy: {kind: maxscale, image: 'example.org/maxscale:24.02'}}"
    )
    refs = image_refs(site)
    assert refs["dbproxy"] == "example.org/maxscale:24.02"
    specs = desired_specs(site, local_inventory(site), {**IMAGES, "dbproxy": refs["dbproxy"]})
    proxy = next(s for s in specs if s.role == "dbproxy")
    assert proxy.image == "example.org/maxscale:24.02"
    assert dict(proxy.env)["PROXY_KIND"] == "maxscale"
    assert "monitor_password" in proxy.secrets


def test_each_component_gets_its_own_etcd_certificate_as_files_never_as_values() -> None:
    site = parse_site(
        "name: p1\nenvironments: {app: guestbook, image: 'guestbook:{sha}', repository: o/r}"
    )
    specs = {
        s.name: s
        for s in desired_specs(site, local_inventory(site), IMAGES | {"router": "cidemo/router:t"})
    }
    etcd = specs["cidemo-p1-etcd"]
    assert dict(etcd.env)["ETCD_TLS"] == "on"
    assert dict(etcd.tls_files)["server.pem"] == "nodes/site-etcd/server-cert.pem"
    for role in ("galera-deis-1", "dbproxy", "jenkins", "router"):
        spec = specs[f"cidemo-p1-{role}"]
        files = dict(spec.tls_files)
        assert files["etcd-client.pem"] == f"clients/{spec.role}/cert.pem"
        assert files["etcd-client-key.pem"] == f"clients/{spec.role}/key.pem"
        assert dict(spec.env)["ETCD_URL"] == "https://10.213.7.8:2379"
        assert not any("BEGIN" in v for _, v in spec.env)
    assert dict(specs["cidemo-p1-galera-deis-2"].tls_files)["server.pem"] == (
        "nodes/deis-2/server-cert.pem"
    )
    assert dict(specs["cidemo-p1-dbproxy"].env)["BACKEND_CIDRS"] == "10.213.7.0/24"
    assert dict(specs["cidemo-p1-router"].env)["APPS_SERVICE_PREFIX"] == "cidemo-p1-app-"
