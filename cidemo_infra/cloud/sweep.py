"""Find, and on request delete, every cloud resource of one site: by name prefix or site tag.

A resource belongs to site `demo` when its name (a floating IP: its description) starts with
`demo-`, when it carries the tag `cidemo-site-demo`, or (servers) when its metadata says
`cidemo_site: demo`. A tag or metadata naming another site wins over the name, so site `demo` never
takes `demo-2-net` of a tagged site `demo-2`. Server groups and keypairs carry neither tags nor
metadata: they belong only by their exact names (`demo-deis`, the site's `ssh.key_name`), so
`demo-2-deis` stays. Only the connection's own project is looked at.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from cidemo_infra.cloud.connect import cloud_errors
from cidemo_infra.errors import CloudError

if TYPE_CHECKING:
    from openstack.connection import Connection

# Deletion order: what holds an address or a port goes before the network it sits on.
KINDS: tuple[str, ...] = (
    "server",
    "floating_ip",
    "router_interface",
    "port",
    "router",
    "subnet",
    "network",
    "security_group_rule",
    "security_group",
    "server_group",
    "keypair",
    "volume",
)
TAG_PREFIX = "cidemo-site-"
ROUTER_OWNED = ("network:router_interface", "network:ha_router_replicated_interface")


@dataclass(frozen=True, order=True)
class Leak:
    kind: str
    id: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name or '-'} ({self.id})"


class SweepError(CloudError):
    """Some of a site's resources could not be deleted; `failures` says which and why."""

    def __init__(self, site_name: str, failures: list[tuple[Leak, str]]) -> None:
        self.site_name = site_name
        self.failures = failures
        first = f"{failures[0][0]}: {failures[0][1]}" if failures else "?"
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(
            f"site '{site_name}': {len(failures)} resource(s) could not be deleted: {first}{more}"
        )


def site_tag(site_name: str) -> str:
    return f"{TAG_PREFIX}{site_name}"


def server_group_name(site_name: str) -> str:
    """The one server group the Terraform module makes (data/terraform/compute.tf)."""
    return f"{site_name}-deis"


def belongs(
    site_name: str,
    name: str | None,
    tags: Iterable[str] | None = None,
    owner_site: str | None = None,
) -> bool:
    """Does a resource with this name (or description), tags and cidemo_site metadata belong?"""
    marks = {t.removeprefix(TAG_PREFIX) for t in tags or () if t.startswith(TAG_PREFIX)}
    if owner_site is not None:
        marks.add(owner_site)
    if marks:
        return site_name in marks
    return (name or "").startswith(f"{site_name}-")


def find(conn: Connection, site_name: str, key_name: str | None = None) -> list[Leak]:
    """Every resource of the site in the connection's project, in deletion order."""
    with cloud_errors(conn, f"listing the resources of site '{site_name}'"):
        return _find(conn, site_name, key_name)


def _find(conn: Connection, site_name: str, key_name: str | None) -> list[Leak]:
    project = conn.current_project_id
    net = conn.network
    leaks: list[Leak] = []

    def add(kind: str, items: Iterable[Any], label: Callable[[Any], str | None]) -> None:
        for item in items:
            tags = getattr(item, "tags", None) or ()
            owner = (getattr(item, "metadata", None) or {}).get("cidemo_site")
            if belongs(site_name, label(item), tags, owner):
                leaks.append(Leak(kind, item.id, label(item) or item.name or ""))

    add("server", conn.compute.servers(details=True), lambda s: s.name)
    add("floating_ip", net.ips(project_id=project), lambda f: f.description)
    ports = [p for p in net.ports(project_id=project) if (p.device_owner or "") not in ROUTER_OWNED]
    add("port", ports, lambda p: p.name)
    add("router", net.routers(project_id=project), lambda r: r.name)
    add("subnet", net.subnets(project_id=project), lambda s: s.name)
    add("network", net.networks(project_id=project), lambda n: n.name)
    add("security_group", net.security_groups(project_id=project), lambda g: g.name)
    for group in conn.compute.server_groups():
        if group.name == server_group_name(site_name):
            leaks.append(Leak("server_group", group.id, group.name))
    for keypair in conn.compute.keypairs():
        if key_name is not None and keypair.name == key_name:
            leaks.append(Leak("keypair", keypair.name, keypair.name))
    if _has_volumes(conn):
        add("volume", conn.block_storage.volumes(details=True), lambda v: v.name)
    return sorted(leaks, key=lambda leak: (KINDS.index(leak.kind), leak.name, leak.id))


def sweep(
    conn: Connection,
    site_name: str,
    delete: bool,
    key_name: str | None = None,
    timeout: float = 180,
) -> list[Leak]:
    """The site's resources; with `delete`, remove them in dependency order.

    `key_name` adds the site's keypair, which may be named anything. Returns what was found; raises
    `SweepError` listing what could not be deleted within `timeout` seconds.
    """
    leaks = find(conn, site_name, key_name)
    if not delete or not leaks:
        return leaks
    failures = delete_leaks(conn, leaks, site_name, timeout)
    remaining = set(find(conn, site_name, key_name))
    for leak in remaining & set(leaks):
        failures.setdefault(leak, "still present after the sweep")
    if failures:
        raise SweepError(site_name, sorted(failures.items()))
    return leaks


def delete_leaks(
    conn: Connection, leaks: Iterable[Leak], site_name: str, timeout: float = 180
) -> dict[Leak, str]:
    """Delete `leaks` in dependency order; returns what could not be deleted, and why."""
    deadline = time.monotonic() + timeout
    failures: dict[Leak, str] = {}
    chosen = list(leaks)
    by_kind = {kind: [leak for leak in chosen if leak.kind == kind] for kind in KINDS}

    removers: dict[str, Callable[[Leak], object]] = {
        "server": lambda leak: conn.compute.delete_server(leak.id),
        "floating_ip": lambda leak: conn.network.delete_ip(leak.id),
        "router_interface": lambda leak: _remove_router_interface(conn, leak.id),
        "port": lambda leak: conn.network.delete_port(leak.id),
        "router": lambda leak: _delete_router(conn, leak.id),
        "subnet": lambda leak: conn.network.delete_subnet(leak.id),
        "network": lambda leak: conn.network.delete_network(leak.id),
        "security_group_rule": lambda leak: conn.network.delete_security_group_rule(leak.id),
        "security_group": lambda leak: conn.network.delete_security_group(leak.id),
        "server_group": lambda leak: conn.compute.delete_server_group(leak.id),
        "keypair": lambda leak: conn.compute.delete_keypair(leak.id),
        "volume": lambda leak: conn.block_storage.delete_volume(leak.id),
    }
    with cloud_errors(conn, f"deleting resources of site '{site_name}'"):
        for kind in KINDS:
            for leak in by_kind[kind]:
                _delete(leak, failures, deadline, removers[kind])
            if kind == "floating_ip":
                # the servers' ports stay bound, and their networks in use, until nova is done
                _wait_servers_gone(conn, by_kind["server"], failures, deadline)
    return failures


def _delete(
    leak: Leak, failures: dict[Leak, str], deadline: float, remove: Callable[[Leak], object]
) -> None:
    """Delete one resource; a 409 (still in use while a dependant goes away) is retried."""
    while True:
        try:
            remove(leak)
            return
        except sdk.NotFoundException:
            return
        except sdk.ConflictException as exc:
            if time.monotonic() >= deadline:
                failures[leak] = _short(exc)
                return
            time.sleep(1)
        except sdk.SDKException as exc:
            failures[leak] = _short(exc)
            return


def _remove_router_interface(conn: Connection, port_id: str) -> None:
    port = conn.network.get_port(port_id)
    conn.network.remove_interface_from_router(port.device_id, port=port_id)


def _delete_router(conn: Connection, router_id: str) -> None:
    for port in conn.network.ports(device_id=router_id):
        if port.device_owner in ROUTER_OWNED:
            with contextlib.suppress(sdk.NotFoundException):
                conn.network.remove_interface_from_router(router_id, port=port.id)
    conn.network.delete_router(router_id, ignore_missing=False)


def _wait_servers_gone(
    conn: Connection, servers: list[Leak], failures: dict[Leak, str], deadline: float
) -> None:
    pending = {leak.id: leak for leak in servers if leak not in failures}
    while pending:
        present = {s.id: s.status for s in conn.compute.servers(details=True)}
        for server_id in [i for i in pending if i not in present]:
            del pending[server_id]
        if not pending:
            return
        if time.monotonic() >= deadline:
            for server_id, leak in pending.items():
                failures[leak] = f"not deleted in time (status {present.get(server_id)})"
            return
        time.sleep(1)


def _has_volumes(conn: Connection) -> bool:
    try:
        return bool(conn.endpoint_for("block-storage"))
    except (sdk.SDKException, ksa.ClientException):  # a cloud without cinder has no volumes
        return False


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
