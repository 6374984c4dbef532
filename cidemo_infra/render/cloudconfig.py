"""Each node's CoreOS `#cloud-config` user-data, from `data/cloud-config/<profile>/<role>.yaml.j2`.

Pure: a `NodeContext` in, the user-data text out. The context is validated first, so every value
that lands inside a systemd unit or a shell script is a plain hostname, address or token; values
that land in YAML scalars go through the `yaml_str` filter, so no value can change the document's
structure. The result is parsed back before it is returned.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from cidemo_infra import errors
from cidemo_infra.data import CLOUD_CONFIG_TEMPLATES
from cidemo_infra.placement import branch_store, firewall

PROFILES = ("flatcar", "coreos-legacy")
ROLES = ("deis", "standalone")
REBOOT_STRATEGIES = ("etcd-lock", "reboot", "off")

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# Deis v1 components reach etcd on the legacy client port.
ETCD_LEGACY_CLIENT_PORT = 4001
DEIS_REGISTRY_PORT = 5000
FLANNEL_SUBNET_LEN = 24
DOCKER_TLS_DIR = "/etc/docker/tls"
# Flatcar's etcd-member mounts the host's /etc/ssl/certs (ETCD_SSL_DIR) at the same path in its
# container, so etcd's files there have one path inside and out (and on the lab's nodes)
ETCD_TLS_DIR = "/etc/ssl/certs"
BRANCH_STORE_SCRIPT = "/opt/cidemo/bin/cidemo-branch-store"  # run by cidemo-branch-store.service

_HOST_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NODE_NAME_RE = re.compile(rf"^{_HOST_LABEL}$")
_DOMAIN_RE = re.compile(rf"^{_HOST_LABEL}(\.{_HOST_LABEL})+$")
_SITE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_ETCD_TAG_RE = re.compile(r"^v3\.5\.[0-9]+(-[a-z0-9]+)?$")
_DEIS_VERSION_RE = re.compile(r"^v1\.[0-9]+\.[0-9]+$")
_SSH_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+=*( [\x20-\x7e]*)?$"
)
_PEM_RE = re.compile(
    r"^-----BEGIN (?P<label>[A-Z0-9 ]+)-----\n"
    r"(?:[A-Za-z0-9+/=]{1,76}\n)+"
    r"-----END (?P=label)-----\n$"
)
_PEM_LABELS = {
    "CERTIFICATE": ("CERTIFICATE",),
    "PRIVATE KEY": ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"),
}
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


class RenderError(errors.RenderError):
    """A template or its context could not produce valid user-data; the message says which and why.

    Messages never contain the context's secret values (the Docker server key).
    """


@dataclass(frozen=True)
class EtcdMember:
    name: str
    private_ip: str


@dataclass(frozen=True)
class NodeContext:
    site_name: str
    domain: str
    profile: str
    node_name: str
    role: str
    private_ip: str
    members: tuple[EtcdMember, ...]
    ssh_authorized_keys: tuple[str, ...]
    docker_ca_pem: str
    docker_server_cert_pem: str
    # Secret: only ever written into the user-data itself.
    docker_server_key_pem: str = field(repr=False)
    reboot_strategy: str = "etcd-lock"
    etcd_image_tag: str = "v3.5.21"
    deis_version: str = "v1.12.2"
    flannel_network: str = "10.244.0.0/16"
    site_network: str = ""  # the private network's CIDR (the apps' firewall); "" = the members
    # host:port of the site's image registry (sites that build): the node's engine trusts the
    # site CA for it (/etc/docker/certs.d/<address>/ca.crt); "" = no registry
    registry_address: str = ""


def render_user_data(ctx: NodeContext, templates_dir: Path | None = None) -> str:
    """The `#cloud-config` user-data of one node, checked to parse as YAML."""
    template_name = f"{ctx.profile}/{ctx.role}.yaml.j2"
    variables = _template_variables(ctx, template_name)
    root = Path(templates_dir) if templates_dir is not None else CLOUD_CONFIG_TEMPLATES
    env = _environment(root)
    try:
        text = env.get_template(template_name).render(**variables)
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"{template_name}: template {exc.name!r} not found in {root}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(
            f"{exc.filename or exc.name or template_name}:{exc.lineno}: {exc.message}"
        ) from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{template_name}: {exc.message}") from None
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise RenderError(f"{template_name}: {exc}") from None
    _check_rendered(template_name, text)
    return text


def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yaml_str"] = yaml_str
    env.filters["shell_word"] = shlex.quote
    return env


def yaml_str(value: object) -> str:
    """`value` as a YAML double-quoted scalar, so it can never change the document structure."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"yaml_str takes a string or an integer, not {type(value).__name__}")
    text = str(value)
    if not text.isprintable():
        raise ValueError("a value for a YAML scalar contains control or non-printable characters")
    # JSON strings are YAML double-quoted scalars; only printable characters remain to escape.
    return json.dumps(text, ensure_ascii=False)


def _check_rendered(template_name: str, text: str) -> None:
    if text.split("\n", 1)[0].rstrip() != "#cloud-config":
        raise RenderError(f"{template_name}: the first line must be '#cloud-config'")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The exception text quotes the document, which holds a private key: keep only the place.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RenderError(
            f"{template_name}: rendered YAML does not parse{where}: {problem}"
        ) from None
    if not isinstance(document, dict):
        raise RenderError(f"{template_name}: rendered YAML is not a mapping")


def _fail(template_name: str, message: str) -> RenderError:
    return RenderError(f"{template_name}: {message}")


def _template_variables(ctx: NodeContext, template_name: str) -> dict[str, Any]:
    if ctx.profile not in PROFILES:
        raise _fail(template_name, f"profile {ctx.profile!r} is not one of {list(PROFILES)}")
    if ctx.role not in ROLES:
        raise _fail(template_name, f"role {ctx.role!r} is not one of {list(ROLES)}")
    if not isinstance(ctx.site_name, str) or not _SITE_RE.match(ctx.site_name):
        raise _fail(
            template_name,
            f"site_name {ctx.site_name!r}: use 1-40 lowercase letters, digits or '-'",
        )
    if not isinstance(ctx.domain, str) or not _DOMAIN_RE.match(ctx.domain):
        raise _fail(template_name, f"domain {ctx.domain!r} is not a lowercase DNS name")
    _check_node_name(template_name, "node_name", ctx.node_name)
    node_ip = _private_ip(template_name, "private_ip", ctx.private_ip)
    if ctx.reboot_strategy not in REBOOT_STRATEGIES:
        raise _fail(
            template_name,
            f"reboot_strategy {ctx.reboot_strategy!r} is not one of {list(REBOOT_STRATEGIES)}",
        )
    if not isinstance(ctx.etcd_image_tag, str) or not _ETCD_TAG_RE.match(ctx.etcd_image_tag):
        raise _fail(
            template_name,
            f"etcd_image_tag {ctx.etcd_image_tag!r}: must be an etcd v3.5.x tag (3.5 is the last "
            "release with the v2 API and the v2 proxy the nodes rely on)",
        )
    if not isinstance(ctx.deis_version, str) or not _DEIS_VERSION_RE.match(ctx.deis_version):
        raise _fail(template_name, f"deis_version {ctx.deis_version!r}: expected like 'v1.12.2'")

    members = _members(template_name, ctx.members)
    member_ips = {m.private_ip for m in members}
    if ctx.role == "deis":
        if EtcdMember(ctx.node_name, str(node_ip)) not in members:
            raise _fail(
                template_name,
                f"deis node {ctx.node_name!r} ({node_ip}) must be one of the etcd members "
                f"{[f'{m.name}={m.private_ip}' for m in members]}",
            )
    elif ctx.node_name in {m.name for m in members} or str(node_ip) in member_ips:
        raise _fail(
            template_name,
            f"standalone node {ctx.node_name!r} ({node_ip}) must not be an etcd member",
        )

    flannel = _flannel_network(template_name, ctx.flannel_network)
    for address in [node_ip, *(ipaddress.IPv4Address(m.private_ip) for m in members)]:
        if address in flannel:
            raise _fail(
                template_name,
                f"flannel_network {flannel} overlaps the node address {address}; pick a range "
                "outside the private network",
            )

    ssh_keys = _ssh_keys(template_name, ctx.ssh_authorized_keys)
    registry = _registry_address(template_name, ctx.registry_address)
    ca_pem = _pem(template_name, "docker_ca_pem", ctx.docker_ca_pem, "CERTIFICATE")
    cert_pem = _pem(
        template_name, "docker_server_cert_pem", ctx.docker_server_cert_pem, "CERTIFICATE"
    )
    key_pem = _pem(template_name, "docker_server_key_pem", ctx.docker_server_key_pem, "PRIVATE KEY")

    legacy = ctx.profile == "coreos-legacy"
    ip = str(node_ip)
    client_ports = [ETCD_CLIENT_PORT, ETCD_LEGACY_CLIENT_PORT] if legacy else [ETCD_CLIENT_PORT]
    listen_hosts = [ip, "127.0.0.1"]
    # flatcar: client and peer TLS with client certificates of the site CA; the legacy profile's
    # etcd2 stays plain HTTP (not hardened: Deis v1's components read it so)
    s = "http" if legacy else "https"
    etcd = {
        "initial_cluster": ",".join(
            f"{m.name}={s}://{m.private_ip}:{ETCD_PEER_PORT}" for m in members
        ),
        "initial_cluster_token": f"cidemo-{ctx.site_name}-etcd",
        "advertise_client_urls": ",".join(f"{s}://{ip}:{port}" for port in client_ports),
        "listen_client_urls": ",".join(
            f"{s}://{host}:{port}" for host in listen_hosts for port in client_ports
        ),
        "peer_url": f"{s}://{ip}:{ETCD_PEER_PORT}",
        "members_client_urls": ",".join(
            f"{s}://{m.private_ip}:{ETCD_CLIENT_PORT}" for m in members
        ),
        "tls_dir": ETCD_TLS_DIR,
    }
    network = ctx.site_network or ",".join(f"{m.private_ip}/32" for m in members)
    registry_port = [int(registry.rsplit(":", 1)[1])] if registry else []
    fence = firewall.rules(ctx.site_name, network.split(","), registry_port)
    fence_chains = firewall.chains(ctx.site_name)
    docker_opts = [
        "--tlsverify",
        f"--tlscacert={DOCKER_TLS_DIR}/ca.pem",
        f"--tlscert={DOCKER_TLS_DIR}/server.pem",
        f"--tlskey={DOCKER_TLS_DIR}/server-key.pem",
    ]
    if legacy and ctx.role == "deis":
        # The Deis registry runs on one of the deis nodes and speaks plain HTTP on the private net.
        docker_opts += [f"--insecure-registry={m.private_ip}:{DEIS_REGISTRY_PORT}" for m in members]
    flannel_config = json.dumps(
        {
            "Network": str(flannel),
            "SubnetLen": FLANNEL_SUBNET_LEN,
            "SubnetMin": str(flannel.network_address),
            "Backend": {"Type": "vxlan"},
        },
        separators=(",", ":"),
    )
    fleet_metadata = (
        "controlPlane=true,dataPlane=true,routerMesh=true"
        if ctx.role == "deis"
        else "role=standalone"
    )
    return {
        "ctx": ctx,
        "ssh_authorized_keys": ssh_keys,
        "docker_ca_pem": ca_pem,
        "docker_server_cert_pem": cert_pem,
        "docker_server_key_pem": key_pem,
        "docker_tls_dir": DOCKER_TLS_DIR,
        "registry_address": registry,
        "docker_opts": " ".join(docker_opts),
        "etcd": etcd,
        "fence": fence,
        "fence_chains": fence_chains,
        "branch_store": {
            "root": branch_store.STORE,
            "file": branch_store.STORE_FILE,
            "size": branch_store.STORE_SIZE,
            "script": BRANCH_STORE_SCRIPT,
        },
        "flannel_config_json": flannel_config,
        "fleet_metadata": fleet_metadata,
        "deisctl_version": ctx.deis_version.removeprefix("v"),
        "node_env": {
            "SITE": ctx.site_name,
            "NODE": ctx.node_name,
            "ROLE": ctx.role,
            "PRIVATE_IP": ip,
            "PROFILE": ctx.profile,
        },
    }


def _check_node_name(template_name: str, what: str, value: object) -> None:
    if not isinstance(value, str) or not _NODE_NAME_RE.match(value):
        raise _fail(
            template_name,
            f"{what} {value!r} is not a valid hostname (lowercase letters, digits, '-')",
        )


def _private_ip(template_name: str, what: str, value: object) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise _fail(template_name, f"{what} {value!r} is not an IPv4 address") from None
    if (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or not (ip.is_private or ip in _CGNAT)
    ):
        raise _fail(
            template_name,
            f"{what} {ip} is not a private address: etcd and fleet speak plain HTTP and must "
            "stay on the private network",
        )
    return ip


def _members(template_name: str, members: object) -> tuple[EtcdMember, ...]:
    if not isinstance(members, tuple | list) or not members:
        raise _fail(template_name, "members: at least one etcd member is required")
    checked: list[EtcdMember] = []
    for i, member in enumerate(members):
        if not isinstance(member, EtcdMember):
            raise _fail(template_name, f"members[{i}] is not an EtcdMember")
        _check_node_name(template_name, f"members[{i}].name", member.name)
        ip = _private_ip(template_name, f"members[{i}].private_ip", member.private_ip)
        checked.append(EtcdMember(member.name, str(ip)))
    names = [m.name for m in checked]
    ips = [m.private_ip for m in checked]
    if len(set(names)) != len(names) or len(set(ips)) != len(ips):
        raise _fail(template_name, f"members: names and addresses must be unique, got {checked}")
    return tuple(checked)


def _registry_address(template_name: str, value: object) -> str:
    """ "" or `<IPv4>:<port>`: the folder name dockerd looks up in /etc/docker/certs.d."""
    if value == "":
        return ""
    host, _, port = str(value).rpartition(":")
    _private_ip(template_name, "registry_address", host)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _fail(template_name, f"registry_address {value!r}: expected <private IPv4>:<port>")
    return f"{host}:{int(port)}"


def _flannel_network(template_name: str, value: object) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(str(value))
    except ValueError:
        raise _fail(template_name, f"flannel_network {value!r} is not an IPv4 network") from None
    if network.prefixlen >= FLANNEL_SUBNET_LEN or not network.is_private:
        raise _fail(
            template_name,
            f"flannel_network {network}: must be a private range wider than "
            f"/{FLANNEL_SUBNET_LEN} (flannel hands out one /{FLANNEL_SUBNET_LEN} per node)",
        )
    return network


def _ssh_keys(template_name: str, keys: object) -> list[str]:
    if not isinstance(keys, tuple | list):
        raise _fail(template_name, "ssh_authorized_keys must be a tuple of strings")
    checked = []
    for i, key in enumerate(keys):
        text = key.strip() if isinstance(key, str) else ""
        if "PRIVATE KEY" in text or not _SSH_KEY_RE.match(text):
            raise _fail(
                template_name,
                f"ssh_authorized_keys[{i}] is not a one-line OpenSSH public key "
                "('ssh-ed25519 AAAA... comment')",
            )
        checked.append(text)
    return checked


def _pem(template_name: str, what: str, value: object, kind: str) -> str:
    text = value.strip().replace("\r\n", "\n") + "\n" if isinstance(value, str) else ""
    match = _PEM_RE.match(text)
    label = match.group("label") if match else ""
    if label not in _PEM_LABELS[kind]:
        # Never echo the value: for the key it is the secret itself.
        raise _fail(template_name, f"{what} is not a single PEM {kind} block")
    return text
