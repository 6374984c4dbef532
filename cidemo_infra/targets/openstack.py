"""The OpenStack target: render, drive Terraform, read its outputs into an inventory."""

from __future__ import annotations

import click

from cidemo_infra.console import Reporter
from cidemo_infra.inventory import Inventory, InventoryNode
from cidemo_infra.render.site_files import render_site
from cidemo_infra.render.tfvars import TFVARS_NAME
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir
from cidemo_infra.terraform import TerraformDriver

DOCKER_TLS_PORT = 2376


def _driver(site: Site, state: StateDir, site_path: str, reporter: Reporter) -> TerraformDriver:
    render_site(site, state, site_path)
    driver = TerraformDriver(state.terraform_dir)
    with reporter.progress("terraform init"):
        driver.init()
    return driver


def plan_infrastructure(
    site: Site, state: StateDir, site_path: str, reporter: Reporter
) -> list[dict[str, str]]:
    driver = _driver(site, state, site_path, reporter)
    with reporter.progress("terraform plan"):
        summary = driver.plan(state.terraform_dir / TFVARS_NAME)
    return [{"address": a, "action": act} for a, act in summary.changes]


def provision_infrastructure(
    site: Site, state: StateDir, site_path: str, reporter: Reporter, *, dry_run: bool, yes: bool
) -> bool:
    """Plan, show, ask, apply, then record the inventory; False when the operator stopped."""
    with state.lock():
        driver = _driver(site, state, site_path, reporter)
        with reporter.progress("terraform plan"):
            summary = driver.plan(state.terraform_dir / TFVARS_NAME)
        reporter.line(f"infrastructure: {summary.describe()}")
        for address, action in summary.changes:
            reporter.line(f"  {action:8} {address}")
        if dry_run:
            return False
        if summary.has_changes:
            if not yes and not click.confirm("Apply this plan?", default=False):
                raise click.exceptions.Abort
            with reporter.progress("terraform apply"):
                driver.apply_plan()
        inventory = inventory_from_outputs(site, driver.outputs(), state)
        inventory.save(state.inventory_file)
    return True


def inventory_from_outputs(site: Site, outputs: dict[str, object], state: StateDir) -> Inventory:
    nodes_out = outputs.get("nodes")
    if not isinstance(nodes_out, dict):
        raise click.UsageError("terraform output 'nodes' is missing; is the module applied?")
    nodes = []
    for name, data in sorted(nodes_out.items()):
        public = data.get("public_ip") or None
        address = public or data["private_ip"]
        if site.docker.transport == "ssh":
            url = f"ssh://{site.ssh.user}@{address}"
        else:
            url = f"tcp://{address}:{DOCKER_TLS_PORT}"
        nodes.append(
            InventoryNode(
                name=name,
                role=data["role"],
                private_ip=data["private_ip"],
                public_ip=public,
                docker_url=url,
                tls_dir=str(state.tls_dir / "client") if site.docker.transport == "tls" else None,
                engine=name,
            )
        )
    standalone = next(n for n in nodes if n.role == "standalone")
    etcd_host = standalone.public_ip or standalone.private_ip
    return Inventory(
        site=site.name, target="openstack", nodes=tuple(nodes), etcd_url=f"http://{etcd_host}:2379"
    )


def destroy_infrastructure(
    site: Site, state: StateDir, site_path: str, reporter: Reporter, *, dry_run: bool, yes: bool
) -> None:
    with state.lock():
        driver = _driver(site, state, site_path, reporter)
        with reporter.progress("terraform plan -destroy"):
            summary = driver.plan(state.terraform_dir / TFVARS_NAME, destroy=True)
        if not summary.has_changes:
            reporter.line("no changes: no infrastructure in the state")
            return
        for address, action in summary.changes:
            reporter.line(f"  {action:8} {address}")
        if dry_run:
            return
        if not yes and not click.confirm(
            f"Destroy all infrastructure of '{site.name}'?", default=False
        ):
            raise click.exceptions.Abort
        with reporter.progress("terraform destroy"):
            driver.destroy(state.terraform_dir / TFVARS_NAME)
        state.inventory_file.unlink(missing_ok=True)
    reporter.line(f"destroyed the infrastructure of '{site.name}'")
