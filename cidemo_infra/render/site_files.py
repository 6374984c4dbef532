"""Render a site's Terraform inputs and user-data into its state directory, all or nothing."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from cidemo_infra import image_registry
from cidemo_infra.data import TERRAFORM_MODULE
from cidemo_infra.errors import RenderError
from cidemo_infra.inventory import Inventory
from cidemo_infra.render.cloudconfig import EtcdMember, NodeContext, render_user_data
from cidemo_infra.render.tfvars import TFVARS_NAME, read_public_key, tfvars
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir, write_private
from cidemo_infra.tls.pki import ETCD_COMPONENTS, ensure_pki

PUBLIC_ADDRESSES = "public-addresses.json"


def node_addresses(site: Site, public: Mapping[str, str]) -> dict[str, list[str]]:
    """Every address the tool may use to reach each node's Docker engine (the certs' SANs)."""
    ips = site.private_ips()
    out: dict[str, list[str]] = {}
    for node in site.nodes:
        names = [str(ips[node.name]), node.name, f"{node.name}.{site.domain}"]
        if public.get(node.name):
            names.append(public[node.name])
        out[node.name] = names
    return out


def public_addresses(state: StateDir) -> dict[str, str]:
    """The nodes' floating IPs once allocated (before the servers, so certificates name them)."""
    path = state.path / PUBLIC_ADDRESSES
    if path.exists():
        return dict(json.loads(path.read_text()))
    known = Inventory.load(state.inventory_file)
    return {n.name: n.public_ip for n in known.nodes if n.public_ip} if known else {}


def save_public_addresses(state: StateDir, addresses: Mapping[str, str]) -> None:
    write_private(state.path / PUBLIC_ADDRESSES, json.dumps(dict(addresses), indent=2) + "\n")


def render_site(site: Site, state: StateDir, site_path: str) -> list[Path]:
    public_key = read_public_key(site, site_path)
    state.ensure()
    ips = site.private_ips()
    pki = ensure_pki(
        state.tls_dir,
        site.name,
        node_addresses(site, public_addresses(state)),
        ETCD_COMPONENTS,
    )
    members = tuple(EtcdMember(n.name, str(ips[n.name])) for n in site.nodes_of("deis"))
    registry = ""
    if image_registry.is_placed(site):  # every node pulls the site's builds from it
        standalone = site.nodes_of("standalone")[0]
        registry = f"{ips[standalone.name]}:{site.services.registry.port}"
    rendered: dict[str, str] = {}
    for node in site.nodes:
        ca, cert, key = pki.server_pems(node.name)
        ctx = NodeContext(
            site_name=site.name,
            domain=site.domain,
            profile=site.node_os,
            node_name=node.name,
            role=node.role,
            private_ip=str(ips[node.name]),
            members=members,
            ssh_authorized_keys=(public_key,),
            docker_ca_pem=ca,
            docker_server_cert_pem=cert,
            docker_server_key_pem=key,
            site_network=str(site.network.cidr),
            registry_address=registry,
        )
        try:
            rendered[node.name] = render_user_data(ctx)
        except RenderError as exc:
            raise RenderError(f"node {node.name}: {exc}") from None
    user_data = {name: state.user_data_dir / f"{name}.yaml" for name in rendered}
    variables = tfvars(site, public_key, user_data)
    for name, text in rendered.items():
        write_private(user_data[name], text)  # holds the node's Docker TLS key
    _copy_module(state.terraform_dir)
    tfvars_path = state.terraform_dir / TFVARS_NAME
    write_private(tfvars_path, json.dumps(variables, indent=2, sort_keys=True) + "\n")
    return [tfvars_path, *user_data.values()]


def module_dir() -> Path:
    """The Terraform module: the package's (data/terraform), or CIDEMO_TERRAFORM_MODULE (one with
    the same variables and outputs, e.g. a site's own variant)."""
    return Path(os.environ.get("CIDEMO_TERRAFORM_MODULE") or TERRAFORM_MODULE)


def _copy_module(target: Path) -> None:
    """Terraform runs in the site's own copy of the module, so two sites never share state."""
    source = module_dir()
    if not any(source.glob("*.tf")):
        where = (
            f"CIDEMO_TERRAFORM_MODULE={source}"
            if os.environ.get("CIDEMO_TERRAFORM_MODULE")
            else f"the package's Terraform module {source} (an incomplete install?)"
        )
        raise RenderError(f"{where}: no *.tf files there")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    wanted = {p.name for p in source.glob("*.tf")}
    for old in target.glob("*.tf"):
        if old.name not in wanted:
            old.unlink()
    for src in source.glob("*.tf"):
        shutil.copyfile(src, target / src.name)
