"""Resources an interrupted apply left behind: the cloud has them, Terraform's state does not.

A crash between the cloud's create and Terraform's next state write (SIGKILL, a lost machine, a
timeout) leaves resources the next apply would create a second time. They are found as the sweep
finds a site's resources (name or tag), plus the rules of the site's security groups and the
interfaces of its router, and compared by ID with the state. They are deleted before the next plan,
never imported: a resource the state never held was never handed to anything.

Servers are the exception that needs care: one the state lacks may also mean the state was lost,
and then the server holds a database member. So a server is an orphan only when the cloud created
it after the last apply started (with some slack for clocks); an older one stops provision.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cidemo_infra.cloud.connect import cloud_errors
from cidemo_infra.cloud.sweep import ROUTER_OWNED, Leak, delete_leaks, find
from cidemo_infra.errors import CloudError

if TYPE_CHECKING:
    from openstack.connection import Connection

CLOCK_SLACK = timedelta(seconds=60)  # the cloud's clock may be behind this machine's
# Kinds the module never creates and that may hold data: never an orphan.
_NEVER = frozenset({"volume"})


@dataclass(frozen=True)
class Orphans:
    deletable: list[Leak] = field(default_factory=list)
    refused: list[tuple[Leak, str]] = field(default_factory=list)  # servers that may hold data

    def refusal(self, site_name: str) -> CloudError:
        leak, why = self.refused[0]
        more = f" (+{len(self.refused) - 1} more)" if len(self.refused) > 1 else ""
        return CloudError(
            f"site '{site_name}': {leak} is not in Terraform's state and {why}{more}: if the "
            "state was lost, restore terraform.tfstate (terraform.tfstate.backup) in the site's "
            "state directory; otherwise remove it with `cidemo destroy --sweep`"
        )


def find_orphans(
    conn: Connection,
    site_name: str,
    tracked: Collection[str],
    apply_started: datetime | None,
    key_name: str | None = None,
) -> Orphans:
    """What of the site the cloud has and the state (`tracked` IDs) does not."""
    with cloud_errors(conn, f"looking for resources of site '{site_name}' outside its state"):
        untracked = [
            leak
            for leak in find(conn, site_name, key_name)
            if leak.kind not in _NEVER and leak.id not in tracked
        ]
        untracked += _untracked_parts(conn, site_name, tracked)
    deletable, refused = [], []
    for leak in untracked:
        why = _server_refusal(conn, leak, apply_started) if leak.kind == "server" else None
        if why:
            refused.append((leak, why))
        else:
            deletable.append(leak)
    return Orphans(deletable, refused)


def delete_orphans(conn: Connection, site_name: str, orphans: Orphans) -> None:
    failures = delete_leaks(conn, orphans.deletable, site_name)
    if failures:
        leak, why = sorted(failures.items())[0]
        raise CloudError(
            f"site '{site_name}': could not delete {leak}, left by an interrupted apply: {why}"
        )


def _untracked_parts(conn: Connection, site_name: str, tracked: Collection[str]) -> list[Leak]:
    """Rules of tracked security groups and interfaces of tracked routers that the state lacks."""
    project = conn.current_project_id
    found: list[Leak] = []
    for group in conn.network.security_groups(project_id=project):
        if group.id not in tracked:
            continue
        for rule in conn.network.security_group_rules(security_group_id=group.id):
            # only the module's own rules: neutron's default egress rules have no description
            own = (rule.description or "").startswith(f"{site_name} ")
            if own and rule.direction == "ingress" and rule.id not in tracked:
                found.append(Leak("security_group_rule", rule.id, rule.description))
    for router in conn.network.routers(project_id=project):
        if router.id not in tracked:
            continue
        for port in conn.network.ports(device_id=router.id):
            if port.device_owner in ROUTER_OWNED and port.id not in tracked:
                found.append(Leak("router_interface", port.id, f"{router.name} interface"))
    return found


def _server_refusal(conn: Connection, leak: Leak, apply_started: datetime | None) -> str | None:
    """Why this untracked server must not be deleted; None when the last apply made it."""
    if apply_started is None:
        return "no apply of this state directory started before it was created"
    server = conn.compute.get_server(leak.id)
    created = _parse_time(server.created_at)
    if created is None:
        return "the cloud does not say when it was created"
    if created < apply_started - CLOCK_SLACK:
        return f"was created at {server.created_at}, before the last apply started"
    return None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # nova's created_at is UTC; some clouds drop the zone
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
