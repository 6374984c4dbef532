"""Terraform inputs of the OpenStack module as JSON (`cidemo.auto.tfvars.json`); pure."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from cidemo_infra.errors import SiteError
from cidemo_infra.placement.specs import has_registry
from cidemo_infra.site import Site

TFVARS_NAME = "cidemo.auto.tfvars.json"
_PUBLIC_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519", "sk-ecdsa-sha2-")


def read_public_key(site: Site, source: str) -> str:
    """The SSH public key from `ssh.public_key` or the file `ssh.public_key_file`, checked."""
    if site.ssh.public_key:
        key, where = site.ssh.public_key.strip(), "ssh.public_key"
    elif site.ssh.public_key_file:
        where = "ssh.public_key_file"
        path = Path(site.ssh.public_key_file).expanduser()
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise SiteError(source, [f"{where}: cannot read {path}: {exc.strerror}"]) from None
    else:
        raise SiteError(source, ["ssh.public_key_file: required to create the keypair"])
    if "PRIVATE KEY" in key:
        raise SiteError(source, [f"{where}: this is a private key; give the public one (.pub)"])
    if not key.startswith(_PUBLIC_KEY_TYPES) or len(key.split()) < 2:
        raise SiteError(
            source,
            [
                f"{where}: not an OpenSSH public key (expected a line like "
                "'ssh-ed25519 AAAA... comment')"
            ],
        )
    try:  # nova refuses a key it cannot parse (HTTP 400 "failed to generate fingerprint")
        serialization.load_ssh_public_key(" ".join(key.split()[:2]).encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SiteError(
            source, [f"{where}: the key does not parse as an OpenSSH public key ({exc})"]
        ) from None
    return key


SERVER_GROUP_POLICIES = {"hard": "anti-affinity", "soft": "soft-anti-affinity"}


def server_group_policy(site: Site) -> str:
    """The Deis nodes' server group policy (roles.deis.anti_affinity, default hard)."""
    deis = site.roles.get("deis")
    return SERVER_GROUP_POLICIES[(deis.anti_affinity if deis else None) or "hard"]


def has_deis_builder(site: Site) -> bool:
    """Whether the nodes run Deis v1's builder (git push on 2222): the coreos-legacy profile
    installs the Deis platform; on Flatcar nothing listens there, so the port stays closed."""
    return site.node_os == "coreos-legacy"


def registry_port(site: Site) -> int:
    """The site registry's port, opened between the nodes; 0 where no registry is placed."""
    return site.services.registry.port if has_registry(site) else 0


def tfvars(site: Site, public_key: str, user_data: Mapping[str, Path]) -> dict[str, Any]:
    ips = site.private_ips()
    nodes = {}
    for node in site.nodes:
        role = site.roles[node.role]
        nodes[node.name] = {
            "role": node.role,
            "flavor": role.flavor,
            "image": role.image,
            "private_ip": str(ips[node.name]),
            "user_data_file": str(user_data[node.name]),
        }
    return {
        "site_name": site.name,
        "cloud": site.cloud,
        "network_cidr": str(site.network.cidr),
        "existing_network": site.network.existing_network or "",
        "external_network": site.network.external_network,
        "dns_nameservers": [str(ip) for ip in site.network.dns],
        "admin_cidrs": [str(c) for c in site.admin_cidrs],
        "deis_builder": has_deis_builder(site),
        "registry_port": registry_port(site),
        "keypair_name": site.ssh.key_name,
        "deis_server_group_policy": server_group_policy(site),
        "ssh_public_key": public_key,
        "nodes": nodes,
        "tags": ["cidemo", f"cidemo-site-{site.name}"],
    }
