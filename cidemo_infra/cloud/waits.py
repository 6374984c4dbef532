"""Bounded waits on the cloud: servers reaching ACTIVE, a TCP port answering."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cidemo_infra.cloud.connect import cloud_errors
from cidemo_infra.errors import CloudError

if TYPE_CHECKING:
    from openstack.connection import Connection

Progress = Callable[[str, str], None]


def wait_for_servers(
    conn: Connection,
    names: list[str],
    timeout: float,
    progress: Progress | None = None,
    interval: float = 1.0,
) -> dict[str, Any]:
    """Wait until every named server is ACTIVE; returns the servers by name.

    `progress(name, status)` is called whenever a server's status changes. A server in ERROR, two
    servers with one name, or the timeout raise `CloudError` naming the server and its status.
    """
    deadline = time.monotonic() + timeout
    pending = set(names)
    seen: dict[str, str] = {}
    ready: dict[str, Any] = {}
    while True:
        found: dict[str, list[Any]] = {}
        with cloud_errors(conn, "listing servers"):
            for server in conn.compute.servers(details=True):
                if server.name in pending:
                    found.setdefault(server.name, []).append(server)
        for name in sorted(pending):
            servers = found.get(name, [])
            if len(servers) > 1:
                ids = ", ".join(s.id for s in servers)
                raise CloudError(f"server '{name}': {len(servers)} servers have this name ({ids})")
            status = servers[0].status if servers else "MISSING"
            if progress is not None and seen.get(name) != status:
                progress(name, status)
            seen[name] = status
            if status == "ACTIVE":
                ready[name] = servers[0]
                pending.discard(name)
            elif status == "ERROR":
                raise CloudError(f"server '{name}' is in ERROR: {_fault(conn, servers[0])}")
        if not pending:
            return ready
        if time.monotonic() >= deadline:
            late = ", ".join(f"{name} ({seen.get(name, 'MISSING')})" for name in sorted(pending))
            raise CloudError(f"servers not ACTIVE after {timeout:.0f}s: {late}")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def wait_for_port(host: str, port: int, timeout: float, interval: float = 1.0) -> None:
    """Wait until `host:port` accepts a TCP connection; `CloudError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, remaining))):
                return
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            raise CloudError(f"{host}:{port}: no TCP connection within {timeout:.0f}s ({last})")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def _fault(conn: Connection, server: Any) -> str:
    fault = server.fault or conn.compute.get_server(server.id).fault or {}
    message = fault.get("message") or "no fault recorded"
    code = fault.get("code")
    return f"{message} (code {code})" if code else message
