"""Node cloud-config: every profile and role renders, passes the offline checker, and keeps the
contract: static etcd bootstrap, Docker API over TLS only, no secret but the node's own key."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cidemo_infra.placement import firewall
from cidemo_infra.render.cloudconfig import (
    PROFILES,
    EtcdMember,
    NodeContext,
    RenderError,
    render_user_data,
)
from cidemo_infra.tls import Pki, ensure_pki
from tests.support.cloudconfig_check import Finding, check_cloud_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "tests/data/coreos-cloud-config.json").read_text())

SITE = "demo"
DOMAIN = "ci-demo.example.com"
MEMBERS = (
    EtcdMember("deis-1", "10.42.0.11"),
    EtcdMember("deis-2", "10.42.0.12"),
    EtcdMember("deis-3", "10.42.0.13"),
)
STANDALONE = ("standalone", "10.42.0.14")
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTGX1Yx7C1SRWnmYdtOFVMVPU3K8XyEgR1sQ ops@ci-demo"
SCHEME = {"flatcar": "https", "coreos-legacy": "http"}  # the legacy profile is not hardened
CASES = [(profile, role) for profile in PROFILES for role in ("deis", "standalone")]
LEGACY_DEPRECATED = {"coreos.etcd2", "coreos.fleet"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    nodes = {m.name: [m.private_ip] for m in MEMBERS} | {STANDALONE[0]: [STANDALONE[1]]}
    return ensure_pki(tmp_path_factory.mktemp("state") / "tls", SITE, nodes)


def make_context(pki: Pki, profile: str, role: str, /, **changes: Any) -> NodeContext:
    node, ip = (MEMBERS[1].name, MEMBERS[1].private_ip) if role == "deis" else STANDALONE
    ca, cert, key = pki.server_pems(node)
    ctx = NodeContext(
        site_name=SITE,
        domain=DOMAIN,
        profile=profile,
        node_name=node,
        role=role,
        private_ip=ip,
        members=MEMBERS,
        ssh_authorized_keys=(SSH_KEY,),
        docker_ca_pem=ca,
        docker_server_cert_pem=cert,
        docker_server_key_pem=key,
    )
    return dataclasses.replace(ctx, **changes)


def render(pki: Pki, profile: str, role: str, **changes: Any) -> tuple[str, dict[str, Any]]:
    text = render_user_data(make_context(pki, profile, role, **changes))
    return text, yaml.safe_load(text)


def units(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for unit in doc["coreos"]["units"]:
        assert unit["name"] not in found, f"unit {unit['name']} listed twice"
        found[unit["name"]] = unit
    return found


def files(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in doc["write_files"]}


def unit_settings(content: str) -> dict[str, list[str]]:
    """systemd `Key=value` lines of a unit or drop-in, every value of a repeated key kept."""
    settings: dict[str, list[str]] = {}
    for line in content.splitlines():
        if "=" in line and not line.startswith(("[", "#")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def environment(content: str) -> dict[str, str]:
    env = {}
    for value in unit_settings(content).get("Environment", []):
        name, _, setting = value.strip('"').partition("=")
        env[name] = setting
    return env


def etcd_settings(doc: dict[str, Any], profile: str) -> dict[str, str]:
    """The etcd configuration as ETCD_* variables, whichever way the profile sets it."""
    if profile == "flatcar":
        member = units(doc)["etcd-member.service"]
        (dropin,) = member["drop_ins"]
        return environment(dropin["content"])
    etcd2_keys = SCHEMA["schema"]["keys"]["coreos"]["keys"]["etcd2"]["keys"]
    return {etcd2_keys[k]["env"]: str(v) for k, v in doc["coreos"]["etcd2"].items()}


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


@pytest.mark.parametrize(("profile", "role"), CASES)
def test_renders_and_passes_the_checker(pki: Pki, profile: str, role: str) -> None:
    text, doc = render(pki, profile, role)
    assert text.startswith("#cloud-config\n")
    assert isinstance(doc, dict)
    findings = check_cloud_config(text, SCHEMA, profile)
    assert errors(findings) == []
    if profile == "flatcar":
        assert findings == []
        assert not {"etcd", "etcd2", "fleet", "flannel"} & set(doc["coreos"])
    else:
        assert {f.path for f in findings} == LEGACY_DEPRECATED
        assert all(f.severity == "warning" for f in findings)


@pytest.mark.parametrize(("profile", "role"), CASES)
def test_identity_and_node_env(pki: Pki, profile: str, role: str) -> None:
    _, doc = render(pki, profile, role)
    ctx = make_context(pki, profile, role)
    assert doc["hostname"] == ctx.node_name
    assert doc["ssh_authorized_keys"] == [SSH_KEY]
    node_env = files(doc)["/etc/cidemo/node.env"]
    assert node_env["permissions"] == "0644"
    assert dict(line.split("=", 1) for line in node_env["content"].splitlines()) == {
        "SITE": SITE,
        "NODE": ctx.node_name,
        "ROLE": role,
        "PRIVATE_IP": ctx.private_ip,
        "PROFILE": profile,
    }
    # With no keys in the site, OpenStack's keypair (metadata) is the only way in.
    text, doc = render(pki, profile, role, ssh_authorized_keys=())
    assert doc["ssh_authorized_keys"] == []
    assert errors(check_cloud_config(text, SCHEMA, profile)) == []


@pytest.mark.parametrize(("profile", "role"), CASES)
def test_etcd_static_bootstrap(pki: Pki, profile: str, role: str) -> None:
    text, doc = render(pki, profile, role)
    ctx = make_context(pki, profile, role)
    etcd = etcd_settings(doc, profile)
    cluster = dict(item.split("=", 1) for item in etcd["ETCD_INITIAL_CLUSTER"].split(","))
    u = SCHEME[profile]
    assert cluster == {m.name: f"{u}://{m.private_ip}:2380" for m in MEMBERS}
    assert "discovery" not in text.lower()
    assert not any(name.startswith("ETCD_DISCOVERY") for name in etcd)
    listen = etcd["ETCD_LISTEN_CLIENT_URLS"].split(",")
    assert f"{u}://{ctx.private_ip}:2379" in listen
    assert f"{u}://127.0.0.1:2379" in listen
    assert all("0.0.0.0" not in url for url in listen)
    if role == "deis":
        assert etcd["ETCD_NAME"] == ctx.node_name
        assert etcd["ETCD_INITIAL_CLUSTER_STATE"] == "new"
        assert etcd["ETCD_INITIAL_CLUSTER_TOKEN"] == f"cidemo-{SITE}-etcd"
        assert etcd["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"{u}://{ctx.private_ip}:2380"
        assert etcd["ETCD_LISTEN_PEER_URLS"] == f"{u}://{ctx.private_ip}:2380"
        assert f"{u}://{ctx.private_ip}:2379" in etcd["ETCD_ADVERTISE_CLIENT_URLS"].split(",")
        assert "ETCD_PROXY" not in etcd
    else:
        assert etcd["ETCD_PROXY"] == "on"
        assert "ETCD_INITIAL_CLUSTER_STATE" not in etcd
    if profile == "flatcar":
        member = units(doc)["etcd-member.service"]
        assert member["enable"] is True
        assert member["command"] == "start"
        assert etcd["ETCD_IMAGE_TAG"] == "v3.5.21"
        if role == "deis":
            assert etcd["ETCD_ENABLE_V2"] == "true"
    else:
        # etcd2 speaks the v2 API natively; Deis v1 also needs the legacy client port.
        assert f"http://{ctx.private_ip}:4001" in listen
        assert units(doc)["etcd2.service"]["command"] == "start"
        assert units(doc)["etcd.service"]["mask"] is True


@pytest.mark.parametrize(("profile", "role"), CASES)
def test_docker_api_is_tls_only_on_2376(pki: Pki, profile: str, role: str) -> None:
    text, doc = render(pki, profile, role)
    found = units(doc)
    assert "2375" not in text.replace(",".join(map(str, firewall.CONTROL_PORTS)), "")
    assert "docker-tcp.socket" not in found
    sockets = {name: u for name, u in found.items() if name.endswith(".socket")}
    assert set(sockets) == {"docker-tls-tcp.socket"}
    socket_unit = sockets["docker-tls-tcp.socket"]
    assert socket_unit["enable"] is True
    assert socket_unit["command"] == "start"
    settings = unit_settings(socket_unit["content"])
    assert settings["ListenStream"] == ["2376"]
    assert settings["BindIPv6Only"] == ["both"]
    assert settings["Service"] == ["docker.service"]
    assert settings["WantedBy"] == ["sockets.target"]

    docker = found["docker.service"]
    opts: dict[str, str] = {}
    for dropin in docker["drop_ins"]:
        opts |= environment(dropin["content"])
    flags = opts["DOCKER_OPTS"].split()
    assert flags[:4] == [
        "--tlsverify",
        "--tlscacert=/etc/docker/tls/ca.pem",
        "--tlscert=/etc/docker/tls/server.pem",
        "--tlskey=/etc/docker/tls/server-key.pem",
    ]
    assert not any(flag.startswith(("-H", "--host")) for flag in flags)
    registries = [f.split("=", 1)[1] for f in flags if f.startswith("--insecure-registry")]
    if profile == "coreos-legacy" and role == "deis":
        assert registries == [f"{m.private_ip}:5000" for m in MEMBERS]
    else:
        assert registries == []


@pytest.mark.parametrize(("profile", "role"), CASES)
def test_containers_cannot_reach_the_metadata_service(pki: Pki, profile: str, role: str) -> None:
    """user-data (served at 169.254.169.254) holds the Docker server key: an app container that
    read it would own the node's engine. The guard rejects that address in DOCKER-USER, once."""
    _, doc = render(pki, profile, role)
    guard = units(doc)["cidemo-metadata-guard.service"]
    assert guard.get("enable") is True and guard.get("command") == "start"
    body = guard["content"]
    assert "Requires=docker.service" in body and "After=docker.service" in body
    assert "PartOf=docker.service" in body  # a docker restart runs it again
    (start,) = [ln for ln in body.splitlines() if ln.startswith("ExecStart=")]
    rule = "DOCKER-USER -d 169.254.169.254/32 -j REJECT"
    assert f"-C {rule} ||" in start and f"-I {rule}'" in start


@pytest.mark.parametrize(("profile", "role"), CASES)
def test_tls_files_and_key_permissions(pki: Pki, profile: str, role: str) -> None:
    _, doc = render(pki, profile, role)
    ctx = make_context(pki, profile, role)
    written = files(doc)
    expected = {
        "/etc/docker/tls/ca.pem": (ctx.docker_ca_pem, "0644"),
        "/etc/docker/tls/server.pem": (ctx.docker_server_cert_pem, "0644"),
        "/etc/docker/tls/server-key.pem": (ctx.docker_server_key_pem, "0600"),
    }
    for path, (content, mode) in expected.items():
        assert written[path]["content"] == content, path
        assert written[path]["permissions"] == mode, path
        assert written[path]["owner"] == "root:root", path


@pytest.mark.parametrize(("profile", "role"), CASES)
def test_no_private_key_but_the_docker_server_key(pki: Pki, profile: str, role: str) -> None:
    text, _ = render(pki, profile, role)
    ctx = make_context(pki, profile, role)
    # the node's server key, for Docker and (flatcar) a copy etcd's user can read; no other
    copies = 2 if profile == "flatcar" else 1
    assert len(re.findall(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text)) == copies
    key_lines = ctx.docker_server_key_pem.strip().splitlines()
    block = "\n".join("      " + line for line in key_lines)
    assert text.count(block) == copies, "every private key block is the node's server key"
    for other in (pki.ca_key, pki.client_key):
        body = other.read_text().strip().splitlines()[1]
        assert body not in text
    # The Deis builder key reaches etcd over the tool's own channel, never through user-data.
    for line in text.splitlines():
        if "sshPrivateKey" in line and not line.lstrip().startswith("#"):
            assert "etcdctl ls /deis/platform" in line or "Description=" in line, line
    assert not re.search(r"(set|mk)\s+\S*sshPrivateKey", text)
    assert "OPENSSH PRIVATE KEY" not in text


@pytest.mark.parametrize("strategy", ["etcd-lock", "reboot", "off"])
@pytest.mark.parametrize("profile", PROFILES)
def test_reboot_strategy(pki: Pki, profile: str, strategy: str) -> None:
    _, doc = render(pki, profile, "standalone", reboot_strategy=strategy)
    assert doc["coreos"]["update"]["reboot_strategy"] == strategy
    if strategy == "etcd-lock":
        # Straight to the members: locksmith speaks etcd v3 on Flatcar, which a v2 proxy cannot.
        endpoints = doc["coreos"]["locksmith"]["endpoint"].split(",")
        assert endpoints == [f"{SCHEME[profile]}://{m.private_ip}:2379" for m in MEMBERS]
        if profile == "flatcar":
            assert (
                doc["coreos"]["locksmith"]["etcd_certfile"]
                == "/etc/ssl/certs/cidemo-etcd-server.pem"
            )
    else:
        assert "locksmith" not in doc["coreos"]


@pytest.mark.parametrize("role", ["deis", "standalone"])
def test_legacy_fleet_flannel_and_deis_units(pki: Pki, role: str) -> None:
    text, doc = render(pki, "coreos-legacy", role, flannel_network="10.250.0.0/16")
    ctx = make_context(pki, "coreos-legacy", role)
    coreos = doc["coreos"]
    assert coreos["fleet"]["public_ip"] == ctx.private_ip
    expected_metadata = (
        "controlPlane=true,dataPlane=true,routerMesh=true" if role == "deis" else "role=standalone"
    )
    assert coreos["fleet"]["metadata"] == expected_metadata
    found = units(doc)
    assert found["fleet.service"]["command"] == "start"
    flannel = found["flanneld.service"]
    (network_dropin,) = flannel["drop_ins"]
    match = re.search(r"etcdctl mk /coreos.com/network/config '(.+)'", network_dropin["content"])
    assert match
    assert json.loads(match.group(1)) == {
        "Network": "10.250.0.0/16",
        "SubnetLen": 24,
        "SubnetMin": "10.250.0.0",
        "Backend": {"Type": "vxlan"},
    }
    assert "Requires=flanneld.service" in text
    assert "increase-nf_conntrack-connections.service" in found

    deis_units = {
        "install-deisctl.service",
        "graceful-deis-shutdown.service",
        "deis-platform-install.service",
    }
    written = files(doc)
    if role == "standalone":
        assert not deis_units & set(found)
        assert "/etc/deis-release" not in written
        return
    assert deis_units <= set(found)
    assert written["/etc/deis-release"]["content"] == "DEIS_RELEASE=v1.12.2\n"
    assert "sh -s 1.12.2" in found["install-deisctl.service"]["content"]
    assert "ConditionPathExists=!/opt/bin/deisctl" in found["install-deisctl.service"]["content"]
    installer = written["/opt/bin/cidemo-deis-platform-install"]["content"]
    waits_for_key = installer.index("/deis/platform/sshPrivateKey")
    sets_domain = installer.index(f"etcdctl set /deis/platform/domain {DOMAIN}")
    install = installer.index("deisctl install platform")
    start = installer.index("deisctl start platform")
    assert waits_for_key < sets_domain < install < start
    platform_unit = unit_settings(found["deis-platform-install.service"]["content"])
    assert platform_unit["ExecStart"] == ["/opt/bin/cidemo-deis-platform-install"]
    # A blocking oneshot would hold up coreos-cloudinit until the tool sets the key.
    assert platform_unit["Type"] == ["simple"]
    assert written["/run/deis/bin/get_image"]["permissions"] == "0755"


def test_templates_are_strict_about_undefined_variables(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "flatcar").mkdir()
    (tmp_path / "flatcar" / "deis.yaml.j2").write_text("#cloud-config\nhostname: {{ nope }}\n")
    with pytest.raises(RenderError, match="nope"):
        render_user_data(make_context(pki, "flatcar", "deis"), templates_dir=tmp_path)


def test_template_that_breaks_yaml_is_a_render_error(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "flatcar").mkdir()
    (tmp_path / "flatcar" / "deis.yaml.j2").write_text(
        "#cloud-config\nwrite_files:\n  - content: |\n{{ docker_server_key_pem }}: [\n"
    )
    with pytest.raises(RenderError) as excinfo:
        render_user_data(make_context(pki, "flatcar", "deis"), templates_dir=tmp_path)
    key_body = make_context(pki, "flatcar", "deis").docker_server_key_pem.splitlines()[1]
    assert "does not parse" in str(excinfo.value)
    assert key_body not in str(excinfo.value), "a YAML error must not quote the key"


def test_missing_header_is_a_render_error(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "flatcar").mkdir()
    (tmp_path / "flatcar" / "deis.yaml.j2").write_text("hostname: {{ ctx.node_name }}\n")
    with pytest.raises(RenderError, match="#cloud-config"):
        render_user_data(make_context(pki, "flatcar", "deis"), templates_dir=tmp_path)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"node_name": "deis-2\nhostname: evil"}, "node_name"),
        ({"domain": "example.com; rm -rf /"}, "domain"),
        ({"profile": "fedora-coreos"}, "profile"),
        ({"reboot_strategy": "sometimes"}, "reboot_strategy"),
        ({"etcd_image_tag": "v3.6.0"}, "etcd_image_tag"),
        ({"private_ip": "1.2.3.4"}, "not a private address"),
        ({"members": ()}, "members"),
        ({"members": (*MEMBERS, EtcdMember("deis-4", "10.42.0.11"))}, "unique"),
        ({"flannel_network": "10.42.0.0/16"}, "overlaps"),
        ({"flannel_network": "10.244.0.0/24"}, "wider than"),
        ({"ssh_authorized_keys": ("-----BEGIN OPENSSH PRIVATE KEY-----",)}, "public key"),
        ({"docker_server_key_pem": "not a key"}, "docker_server_key_pem"),
        ({"registry_address": "10.42.0.13"}, "registry_address"),
        ({"registry_address": "8.8.8.8:5000"}, "not a private address"),
        ({"registry_address": "10.42.0.13:5000/../../x"}, "registry_address"),
        (
            {"docker_ca_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            "docker_ca_pem",
        ),
    ],
)
def test_invalid_context_is_rejected(pki: Pki, changes: dict[str, Any], needle: str) -> None:
    ctx = make_context(pki, "flatcar", "deis", **changes)
    with pytest.raises(RenderError, match=re.escape(needle)) as excinfo:
        render_user_data(ctx)
    key_body = pki.server_pems("deis-2")[2].splitlines()[1]
    assert key_body not in str(excinfo.value)


def test_roles_must_match_membership(pki: Pki) -> None:
    with pytest.raises(RenderError, match="must be one of the etcd members"):
        render_user_data(make_context(pki, "flatcar", "deis", private_ip="10.42.0.99"))
    with pytest.raises(RenderError, match="must not be an etcd member"):
        render_user_data(make_context(pki, "flatcar", "standalone", node_name="deis-1"))


def test_context_repr_hides_the_server_key(pki: Pki) -> None:
    ctx = make_context(pki, "flatcar", "deis")
    assert "PRIVATE KEY" not in repr(ctx)
    assert ctx.docker_server_key_pem.splitlines()[1] not in repr(ctx)


def _check(text: str, profile: str = "flatcar") -> list[Finding]:
    return check_cloud_config(text, SCHEMA, profile)


def _has_error(findings: list[Finding], path: str, fragment: str) -> bool:
    return any(f.severity == "error" and f.path == path and fragment in f.message for f in findings)


def test_checker_rejects_an_unknown_key() -> None:
    findings = _check(
        "#cloud-config\ncoreos:\n  units:\n    - name: a.service\n      enabled: true\n"
    )
    assert _has_error(findings, "coreos.units[0].enabled", "unknown key")


def test_checker_rejects_a_bad_reboot_strategy() -> None:
    findings = _check(
        "#cloud-config\ncoreos:\n  reboot-strategy: off\n  update:\n"
        "    reboot-strategy: sometimes\n"
    )
    assert _has_error(findings, "coreos.update.reboot_strategy", "sometimes")
    assert _has_error(findings, "coreos.reboot_strategy", "unknown key")


def test_checker_rejects_a_bad_unit_command() -> None:
    findings = _check(
        "#cloud-config\ncoreos:\n  units:\n    - name: a.service\n      command: launch\n"
    )
    assert _has_error(findings, "coreos.units[0].command", "launch")


def test_checker_rejects_a_missing_header() -> None:
    findings = _check("hostname: deis-1\n")
    assert _has_error(findings, "<header>", "#cloud-config")
    assert _check("#!/bin/bash\necho hi\n")[0].path == "<header>"


@pytest.mark.parametrize("section", ["etcd2", "fleet", "etcd"])
def test_checker_rejects_legacy_sections_on_flatcar(section: str) -> None:
    text = f"#cloud-config\ncoreos:\n  {section}:\n    name: deis-1\n"
    if section == "fleet":
        text = text.replace("name: deis-1", "metadata: role=x")
    assert _has_error(_check(text, "flatcar"), f"coreos.{section}", "Flatcar does not ship")
    legacy = _check(text, "coreos-legacy")
    assert errors(legacy) == []
    assert [(f.severity, f.path) for f in legacy] == [("warning", f"coreos.{section}")]


def test_checker_rejects_write_files_under_usr() -> None:
    findings = _check(
        "#cloud-config\nwrite_files:\n  - path: /usr/local/bin/x\n"
        "    content: hi\n  - path: /etc/x\n    content: hi\n"
    )
    assert _has_error(findings, "write_files[0].path", "/usr")
    assert not any(f.path.startswith("write_files[1]") for f in findings)


def test_checker_normalises_dashes_and_reads_values_as_coreos_cloudinit_does() -> None:
    ok = _check(
        "#cloud-config\nmanage-etc-hosts: localhost\ncoreos:\n  units:\n"
        "    - name: docker.service\n      drop-ins:\n        - name: a.conf\n"
        '          content: "[Service]\\n"\n'
        'write_files:\n  - path: /etc/x\n    permissions: "0600"\n'
        "    encoding: b64\n    content: aGk=\n"
    )
    assert ok == []
    bad = _check(
        "#cloud-config\nmanage_etc_hosts: true\ncoreos:\n  update:\n    reboot_strategy: off\n"
        'write_files:\n  - path: /etc/x\n    permissions: "0999"\n    encoding: b64\n'
        '    content: "not base64!"\n'
    )
    assert _has_error(bad, "manage_etc_hosts", "boolean")
    assert _has_error(bad, "coreos.update.reboot_strategy", "boolean")
    assert _has_error(bad, "write_files[0].permissions", "0999")
    assert _has_error(bad, "write_files[0].content", "b64")
    assert _has_error(_check("#cloud-config\nmanage_etc_hosts: all\n"), "manage_etc_hosts", "all")


def test_checker_catches_a_mutated_rendered_file(pki: Pki) -> None:
    text, doc = render(pki, "flatcar", "deis")
    doc["coreos"]["etcd2"] = {"discovery": "https://discovery.etcd.io/x"}
    doc["coreos"]["units"][0]["command"] = "launch"
    mutated = "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)
    findings = _check(mutated)
    assert _has_error(findings, "coreos.etcd2", "Flatcar")
    assert _has_error(findings, "coreos.units[0].command", "launch")
    assert _check("#cloud-config\n" + yaml.safe_dump(yaml.safe_load(text))) == []


@pytest.mark.parametrize("role", ["deis", "standalone"])
def test_flatcar_etcd_asks_clients_and_peers_for_site_certificates(pki: Pki, role: str) -> None:
    _, doc = render(pki, "flatcar", role)
    etcd = etcd_settings(doc, "flatcar")
    assert etcd["ETCD_CLIENT_CERT_AUTH"] == "true"
    assert etcd["ETCD_TRUSTED_CA_FILE"] == etcd["ETCD_PEER_TRUSTED_CA_FILE"]
    assert etcd["ETCD_TRUSTED_CA_FILE"] == "/etc/ssl/certs/cidemo-etcd-ca.pem"
    assert (
        etcd["ETCD_PEER_CERT_FILE"]
        == etcd["ETCD_CERT_FILE"]
        == "/etc/ssl/certs/cidemo-etcd-server.pem"
    )
    if role == "deis":
        assert etcd["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    written = files(doc)
    assert written["/etc/ssl/certs/cidemo-etcd-server-key.pem"]["permissions"] == "0600"
    assert written["/etc/ssl/certs/cidemo-etcd-server-key.pem"]["owner"] == "etcd:etcd"
    assert "BEGIN CERTIFICATE" in written["/etc/ssl/certs/cidemo-etcd-ca.pem"]["content"]


@pytest.mark.parametrize("role", ["deis", "standalone"])
def test_flatcar_nodes_fence_the_apps_network_on_input_and_docker_user(pki: Pki, role: str) -> None:
    _, doc = render(pki, "flatcar", role, site_network="10.42.0.0/24")
    unit = units(doc)["cidemo-apps-firewall.service"]
    assert unit["enable"] is True and unit["command"] == "start"
    starts = [ln for ln in unit["content"].splitlines() if ln.startswith("ExecStart=")]
    chains = firewall.chains(SITE)
    ports = ",".join(map(str, firewall.CONTROL_PORTS))
    assert any(f"-I DOCKER-USER 1 -j {chains.forward}" in ln for ln in starts)
    assert any(f"-I INPUT 1 -j {chains.input}" in ln for ln in starts)
    forward = [ln for ln in starts if f"-A {chains.forward} " in ln]
    assert len(forward) == 1 and "-d 10.42.0.0/24" in forward[0] and ports in forward[0]
    assert "-i docker_gwbridge" in forward[0] and "REJECT" in forward[0]
    (inbound,) = [ln for ln in starts if f"-A {chains.input} " in ln]
    assert "-i docker_gwbridge" in inbound and ports in inbound


def test_the_apps_firewall_fences_the_site_registry_where_one_is_placed(pki: Pki) -> None:
    chains = firewall.chains(SITE)
    for address, fenced in (("10.42.0.13:5123", True), ("", False)):
        _, doc = render(
            pki, "flatcar", "deis", site_network="10.42.0.0/24", registry_address=address
        )
        unit = units(doc)["cidemo-apps-firewall.service"]["content"].splitlines()
        appended = [
            ln for ln in unit if f"-A {chains.forward} " in ln or f"-A {chains.input} " in ln
        ]
        assert len(appended) == 2
        assert all(
            (",".join(map(str, firewall.CONTROL_PORTS)) + ",5123" in ln) is fenced
            for ln in appended
        )


@pytest.mark.parametrize(("profile", "role"), CASES)
def test_nodes_trust_the_site_ca_for_the_site_registry(pki: Pki, profile: str, role: str) -> None:
    """Every node's engine pulls the site's builds: the site CA for that one registry only."""
    text, doc = render(pki, profile, role, registry_address="10.42.0.13:5000")
    assert errors(check_cloud_config(text, SCHEMA, profile)) == []
    trusted = files(doc)["/etc/docker/certs.d/10.42.0.13:5000/ca.crt"]
    assert trusted["content"].strip() == pki.server_pems("deis-2")[0].strip()
    assert trusted["permissions"] == "0644"
    _, without = render(pki, profile, role)
    assert not [p for p in files(without) if p.startswith("/etc/docker/certs.d/")]
