"""The OpenStack target: preflight, render, Terraform, waits, and the inventory from its outputs.

Order of provision: render -> init -> orphans of an interrupted apply (found, shown) -> preflight
(nothing created on failure) -> ask -> delete the orphans -> floating IPs first -> plan (saved) ->
show -> ask -> apply that plan -> inventory from `terraform output -json` -> wait for every server
ACTIVE. The service tier is then placed over each node's Docker endpoint (TLS or ssh), unless the
operator asked for the infrastructure only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import click

from cidemo_infra.cloud.connect import connect
from cidemo_infra.cloud.orphans import Orphans, delete_orphans, find_orphans
from cidemo_infra.cloud.preflight import check, terraform_keypairs
from cidemo_infra.cloud.sweep import Leak, sweep
from cidemo_infra.cloud.waits import wait_for_servers
from cidemo_infra.console import Reporter
from cidemo_infra.errors import CloudError, TerraformError
from cidemo_infra.inventory import Inventory, InventoryNode
from cidemo_infra.placement.specs import etcd_scheme
from cidemo_infra.render.site_files import (
    PUBLIC_ADDRESSES,
    public_addresses,
    render_site,
    save_public_addresses,
)
from cidemo_infra.render.tfvars import TFVARS_NAME, read_public_key
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir
from cidemo_infra.terraform import PlanSummary, TerraformDriver

DOCKER_TLS_PORT = 2376
FLOATING_IPS = "openstack_networking_floatingip_v2.node"


def _driver(site: Site, state: StateDir, site_path: str, reporter: Reporter) -> TerraformDriver:
    render_site(site, state, site_path)
    driver = site_driver(site, state, reporter)
    with reporter.progress("terraform init"):
        driver.init()
    return driver


def site_driver(site: Site, state: StateDir, reporter: Reporter) -> TerraformDriver:
    """The site's Terraform, bounded by `timeouts.terraform`, its progress shown as it runs."""
    return TerraformDriver(
        state.terraform_dir, timeout=float(site.timeouts.terraform), progress=reporter.detail
    )


def _connect(site: Site) -> Any:
    assert site.cloud is not None  # the site model requires it for this target
    return connect(site.cloud)


def _orphans(site: Site, conn: Any, driver: TerraformDriver, reporter: Reporter) -> Orphans:
    with reporter.progress("looking for resources an interrupted apply left"):
        return find_orphans(
            conn,
            site.name,
            driver.tracked_ids(),
            driver.last_apply_started(),
            key_name=site.ssh.key_name,
        )


def _preflight(
    site: Site, state: StateDir, site_path: str, reporter: Reporter, conn: Any, orphans: Orphans
) -> None:
    # an orphan keypair is deleted before the apply, so it does not stand in Terraform's way
    managed = terraform_keypairs(state.terraform_dir) | {
        leak.name for leak in orphans.deletable if leak.kind == "keypair"
    }
    with reporter.progress(f"preflight against cloud '{site.cloud}'"):
        check(site, conn, read_public_key(site, site_path), managed)


def _checked(
    site: Site, state: StateDir, site_path: str, reporter: Reporter, driver: TerraformDriver
) -> tuple[Any, Orphans]:
    """Before any plan: the orphans of an interrupted apply (stop on a server that may hold
    data), then preflight; returns the connection and the orphans to delete."""
    conn = _connect(site)
    orphans = _orphans(site, conn, driver, reporter)
    if orphans.refused:
        raise orphans.refusal(site.name)
    _preflight(site, state, site_path, reporter, conn, orphans)
    return conn, orphans


def _orphan_rows(orphans: Orphans) -> list[dict[str, str]]:
    return [{"address": str(leak), "action": "delete (not in state)"} for leak in orphans.deletable]


def plan_infrastructure(
    site: Site, state: StateDir, site_path: str, reporter: Reporter
) -> list[dict[str, str]]:
    driver = _driver(site, state, site_path, reporter)
    _, orphans = _checked(site, state, site_path, reporter, driver)
    with reporter.progress("terraform plan"):
        summary = driver.plan(state.terraform_dir / TFVARS_NAME)
    return _orphan_rows(orphans) + [{"address": a, "action": act} for a, act in summary.changes]


def provision_infrastructure(
    site: Site, state: StateDir, site_path: str, reporter: Reporter, *, dry_run: bool, yes: bool
) -> bool:
    """Plan, show, ask, apply, record the inventory, wait; False when nothing more should run."""
    with state.lock():
        driver = _driver(site, state, site_path, reporter)
        conn, orphans = _checked(site, state, site_path, reporter, driver)
        if orphans.deletable:
            _show_orphans(orphans, reporter)
            if not dry_run:
                if not yes and not click.confirm("Delete them?", default=False):
                    raise click.exceptions.Abort
                with reporter.progress(f"deleting {len(orphans.deletable)} orphaned resource(s)"):
                    delete_orphans(conn, site.name, orphans)
        if site.docker.transport == "tls" and not dry_run:
            allocate_public_addresses(site, state, site_path, driver, reporter, yes=yes)
        with reporter.progress("terraform plan"):
            summary = driver.plan(state.terraform_dir / TFVARS_NAME)
        _show(summary, reporter)
        if dry_run:
            return False
        if summary.has_changes:
            if not yes and not click.confirm("Apply this plan?", default=False):
                raise click.exceptions.Abort
            with reporter.progress("terraform apply"):
                _apply(driver, conn, site)
        inventory = inventory_from_outputs(site, driver.outputs(), state)
        inventory.save(state.inventory_file)
        servers = [f"{site.name}-{n.name}" for n in inventory.nodes]
        with reporter.progress(f"waiting for {len(servers)} servers to be ACTIVE"):
            wait_for_servers(conn, servers, float(site.timeouts.server_active))
    return True


def _apply(driver: TerraformDriver, conn: Any, site: Site) -> None:
    """Apply the saved plan. A server that went to ERROR is reported by the provider without
    nova's reason ("last error: <nil>"); the server's fault says it, so the error line gets it."""
    try:
        driver.apply_plan()
    except TerraformError as exc:
        raise with_server_faults(exc, conn, site) from None


_INSTANCE = re.compile(r'^openstack_compute_instance_v2\.node\["([^"]+)"\]$')
_NO_REASON = re.compile(r"\.? *last error: %!s\(<nil>\)")


def with_server_faults(exc: TerraformError, conn: Any, site: Site) -> TerraformError:
    diagnostics = []
    for diagnostic in exc.diagnostics:
        match = _INSTANCE.match(str(diagnostic.get("address") or ""))
        summary = str(diagnostic.get("summary") or "")
        if match and "'ERROR'" in summary:
            server = conn.compute.find_server(f"{site.name}-{match.group(1)}")
            fault = (getattr(server, "fault", None) or {}) if server is not None else {}
            if fault.get("message"):
                diagnostic = {
                    **diagnostic,
                    "summary": _NO_REASON.sub("", summary),
                    "detail": f"nova's fault: {fault['message']}",
                }
        diagnostics.append(diagnostic)
    return TerraformError(exc.cmd, exc.rc, exc.stderr, diagnostics)


def _show_orphans(orphans: Orphans, reporter: Reporter) -> None:
    reporter.line(
        f"{len(orphans.deletable)} resource(s) of the site are not in Terraform's state (left by "
        "an interrupted apply); they are deleted before the plan, so nothing is created twice:"
    )
    for leak in orphans.deletable:
        reporter.line(f"  delete   {leak}")


def allocate_public_addresses(
    site: Site,
    state: StateDir,
    site_path: str,
    driver: TerraformDriver,
    reporter: Reporter,
    *,
    yes: bool,
    resource: str = FLOATING_IPS,
) -> dict[str, str]:
    """Allocate the floating IPs first (a targeted apply) and render again, so each node's Docker
    TLS certificate names the address the tool will connect to before the server boots with it."""
    known = public_addresses(state)
    if all(known.get(node.name) for node in site.nodes):
        return known
    with reporter.progress("terraform plan (floating IPs first)"):
        summary = driver.plan(state.terraform_dir / TFVARS_NAME, targets=[resource])
    _show(summary, reporter)
    if summary.has_changes:
        if not yes and not click.confirm("Allocate these floating IPs?", default=False):
            raise click.exceptions.Abort
        with reporter.progress("terraform apply (floating IPs)"):
            driver.apply_plan()
    addresses = driver.outputs().get("floating_ips")
    if not isinstance(addresses, dict) or set(addresses) != {n.name for n in site.nodes}:
        raise CloudError("terraform output 'floating_ips' does not name every node")
    save_public_addresses(state, addresses)
    render_site(site, state, site_path)
    return dict(addresses)


def _show(summary: PlanSummary, reporter: Reporter) -> None:
    reporter.line(f"infrastructure: {summary.describe()}")
    for address, action in summary.changes:
        reporter.line(f"  {action:8} {address}")


def inventory_from_outputs(site: Site, outputs: dict[str, Any], state: StateDir) -> Inventory:
    """The inventory from `terraform output -json`: where each node's engine is reached."""
    nodes_out = outputs.get("nodes")
    if not isinstance(nodes_out, dict) or not nodes_out:
        raise CloudError("terraform output 'nodes' is missing or empty; was the module applied?")
    nodes = []
    for name, data in sorted(nodes_out.items()):
        public = data.get("public_ip") or None
        address = public or data["private_ip"]
        tls = site.docker.transport == "tls"
        url = f"tcp://{address}:{DOCKER_TLS_PORT}" if tls else f"ssh://{site.ssh.user}@{address}"
        nodes.append(
            InventoryNode(
                name=name,
                role=data["role"],
                private_ip=data["private_ip"],
                public_ip=public,
                docker_url=url,
                tls_dir=str(state.tls_dir) if tls else None,
                engine=name,
            )
        )
    standalone = next(n for n in nodes if n.role == "standalone")
    return Inventory(
        site=site.name,
        target="openstack",
        nodes=tuple(nodes),
        etcd_url=f"{etcd_scheme(site)}://{standalone.private_ip}:2379",
    )


@dataclass(frozen=True)
class DestroyPlan:
    summary: PlanSummary
    orphans: Orphans

    @property
    def has_changes(self) -> bool:
        return self.summary.has_changes or bool(self.orphans.deletable)


def plan_destroy(site: Site, state: StateDir, site_path: str, reporter: Reporter) -> DestroyPlan:
    conn = _connect(site)
    driver = _driver(site, state, site_path, reporter)
    orphans = _orphans(site, conn, driver, reporter)
    with reporter.progress("terraform plan -destroy"):
        summary = driver.plan(state.terraform_dir / TFVARS_NAME, destroy=True)
    _show(summary, reporter)
    if orphans.deletable:
        _show_orphans(orphans, reporter)
    return DestroyPlan(summary, orphans)


def destroy_infrastructure(
    site: Site, state: StateDir, reporter: Reporter, planned: DestroyPlan
) -> None:
    """The orphans of an interrupted apply, then everything Terraform's state holds."""
    if planned.orphans.deletable:
        with reporter.progress(f"deleting {len(planned.orphans.deletable)} orphaned resource(s)"):
            delete_orphans(_connect(site), site.name, planned.orphans)
    if planned.summary.has_changes:
        driver = site_driver(site, state, reporter)
        with reporter.progress("terraform destroy"):
            driver.destroy(state.terraform_dir / TFVARS_NAME)
    (state.path / PUBLIC_ADDRESSES).unlink(missing_ok=True)


def sweep_leaks(site: Site, reporter: Reporter, delete: bool) -> list[Leak]:
    """What carries the site's prefix or tag after Terraform: reported, or deleted with --sweep."""
    conn = _connect(site)
    with reporter.progress("looking for resources Terraform did not remove"):
        leaks = sweep(conn, site.name, delete=delete, key_name=site.ssh.key_name)
    for leak in leaks:
        reporter.line(("deleted " if delete else "left over: ") + str(leak))
    return leaks
