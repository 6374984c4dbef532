"""A member's wsrep status, read as root over the member's local socket (no password needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import docker.errors

STATUS_SQL = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state_comment', "
    "'wsrep_cluster_size', 'wsrep_cluster_state_uuid', 'wsrep_ready', "
    "'wsrep_cluster_status', 'wsrep_last_committed')"
)


@dataclass(frozen=True)
class MemberStatus:
    container: str
    running: bool
    state: str = ""  # Synced, Donor/Desynced, Joining, ...
    cluster_size: int = 0
    cluster_uuid: str = ""
    ready: bool = False
    primary: bool = False
    last_committed: int = -1
    error: str = ""

    @property
    def is_synced(self) -> bool:
        return self.running and self.state == "Synced" and self.ready and self.primary


def run_sql(container: Any, sql: str, database: str | None = None) -> tuple[int, str]:
    """Run SQL in a member as root through its unix socket; returns (exit code, output)."""
    cmd = ["mariadb", "--batch", "--skip-column-names", "-e", sql]
    if database:
        cmd += ["--database", database]
    result = container.exec_run(cmd, demux=False)
    return result.exit_code, (result.output or b"").decode(errors="replace").strip()


def member_status(container: Any, refresh: bool = True) -> MemberStatus:
    """The member's status; `refresh=False` trusts the container's state as already read (a
    listing a moment ago) instead of inspecting it again."""
    name = container.name
    if refresh:
        try:
            container.reload()
        except docker.errors.NotFound:
            return MemberStatus(name, False, error="container not found")
    if container.status != "running":
        return MemberStatus(name, False, error=f"container {container.status}")
    try:
        rc, out = run_sql(container, STATUS_SQL)
    except docker.errors.APIError as exc:
        return MemberStatus(name, True, error=str(exc.explanation or exc))
    if rc != 0:
        return MemberStatus(name, True, error=out.splitlines()[-1] if out else f"exit {rc}")
    values = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return MemberStatus(
        name,
        True,
        state=values.get("wsrep_local_state_comment", ""),
        cluster_size=int(values.get("wsrep_cluster_size", "0") or 0),
        cluster_uuid=values.get("wsrep_cluster_state_uuid", ""),
        ready=values.get("wsrep_ready") == "ON",
        primary=values.get("wsrep_cluster_status") == "Primary",
        last_committed=int(values.get("wsrep_last_committed", "-1") or -1),
    )
