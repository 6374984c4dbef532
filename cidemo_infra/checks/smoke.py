"""The smoke checks of a placed site: etcd, registrations, Galera, the proxy, a row, Jenkins, the
image registry.

After etcd answers, the site is read once (every registration in one etcd read, every container
in one listing per engine) and the checks run at the same time, each on that reading; the report
lists their verdicts in a fixed order, every failing check with its own line.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from cidemo_infra.checks.report import Report
from cidemo_infra.engines import ENGINE_ERRORS, unique_clients
from cidemo_infra.galera.member import member_status, run_sql
from cidemo_infra.placement.specs import GALERA_PORTS, LABEL_SITE, ContainerSpec
from cidemo_infra.probes import http_answers
from cidemo_infra.registry.keys import (
    JENKINS_SERVICE,
    PROXY_SERVICES,
    Registration,
    Registry,
    positions_dir,
)

SMOKE_DB = "cidemo_smoke"
PROXY_POLL = 0.2  # seconds between two readings of the proxy's backends while they differ


@dataclass
class SmokeContext:
    registry: Registry
    clients: Mapping[str, docker.DockerClient]
    specs: list[ContainerSpec]
    rw_endpoint: tuple[str, int]  # where the tool reaches the proxy's read-write port
    root_password: str
    tls_ca: Path | None  # the site CA: the servers' certificates are verified against it
    jenkins_url: str | None
    ttl: int
    unreachable: Mapping[str, str] = field(default_factory=dict)  # engine -> why it does not answer


@dataclass(frozen=True)
class Reading:
    """The site as read once for all checks: live registrations by service, and the site's
    containers by (engine, name) as listed (not inspected)."""

    registrations: Mapping[str, list[Registration]]
    containers: Mapping[tuple[str, str], docker.models.containers.Container]

    def services(self, service: str) -> list[Registration]:
        return list(self.registrations.get(service, []))


Check = Callable[[SmokeContext, Reading, list[ContainerSpec], Report], None]


def run_smoke(ctx: SmokeContext) -> Report:
    report = Report()
    for engine, why in sorted(ctx.unreachable.items()):
        report.add(f"node {engine}", False, why)
    ok, detail = ctx.registry.is_healthy()
    report.add("etcd", ok, detail)
    if not ok:
        return report
    members = [s for s in ctx.specs if s.role == "galera"]
    try:
        reading = _read(ctx)
    except Exception as exc:  # one failed check, not a crash of the command
        report.add("site readable", False, f"{type(exc).__name__}: {exc}")
        return report
    checks: list[tuple[str, Check]] = [
        ("database registrations", _registrations),
        ("galera", _galera),
        ("proxy", _proxy),
        ("row through proxy", _row_everywhere),
        ("jenkins", _jenkins),
        ("image registry", _image_registry),
    ]

    def bound(check: Check) -> Callable[[Report], None]:
        return lambda part: check(ctx, reading, members, part)

    for part in run_parallel([bound(c) for _, c in checks], [n for n, _ in checks]):
        report.checks.extend(part.checks)
    return report


def run_parallel(checks: list[Callable[[Report], None]], names: list[str]) -> list[Report]:
    """Run each check into a report of its own, all at once; the reports in the checks' order.
    A check that raises is a failed check named after it, and the others still report."""
    reports = [Report() for _ in checks]

    def one(i: int) -> None:
        try:
            checks[i](reports[i])
        except Exception as exc:  # reported as that check's failure
            reports[i].add(names[i], False, f"the check itself failed: {type(exc).__name__}: {exc}")

    with concurrent.futures.ThreadPoolExecutor(max(1, len(checks))) as pool:
        list(pool.map(one, range(len(checks))))
    return reports


def _read(ctx: SmokeContext) -> Reading:
    site = next((s.site for s in ctx.specs), "")
    containers: dict[tuple[str, str], docker.models.containers.Container] = {}
    reachable = {e: c for e, c in ctx.clients.items() if e not in ctx.unreachable}
    node_engines = {s.node: s.engine for s in ctx.specs}
    for engine, client in unique_clients(reachable).items():
        for entry in client.api.containers(all=True, filters={"label": f"{LABEL_SITE}={site}"}):
            name = entry["Names"][0].lstrip("/")
            node = (entry.get("Labels") or {}).get("io.cidemo.node", "")
            attrs = {
                "Id": entry["Id"],
                "Name": name,
                "State": entry.get("State", ""),
                "Status": entry.get("Status", ""),  # "Up 2 minutes (healthy)": the health too
            }
            containers[(node_engines.get(node, engine), name)] = client.containers.prepare_model(
                attrs
            )
    return Reading(ctx.registry.all_services(), containers)


def _container(
    reading: Reading, ctx: SmokeContext, spec: ContainerSpec
) -> docker.models.containers.Container:
    if spec.engine in ctx.unreachable:  # checked as missing, like a removed container
        raise docker.errors.NotFound(f"node {spec.node}: its engine does not answer")
    found = reading.containers.get((spec.engine, spec.name))
    if found is None:
        raise docker.errors.NotFound(f"{spec.name}: no such container")
    return found


def _each(items: list[Any], work: Callable[[Any], Any]) -> list[Any]:
    """`work` on every item at once (one exec per member); results in the items' order."""
    if len(items) <= 1:
        return [work(i) for i in items]
    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(work, items))


def _registrations(
    ctx: SmokeContext, reading: Reading, members: list[ContainerSpec], report: Report
) -> None:
    expected = {s.name: dict(s.env)["NODE_ADDRESS"] for s in members}
    problems = []
    for service, port in GALERA_PORTS.items():
        regs = reading.services(service)
        got = {r.container: r.value for r in regs}
        want = {name: f"{ip}:{port}" for name, ip in expected.items()}
        if got != want:
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            wrong = sorted(n for n in set(got) & set(want) if got[n] != want[n])
            problems.append(
                f"{service}: missing {missing or '-'}, unexpected {extra or '-'}, "
                f"wrong value {wrong or '-'}"
            )
    report.add(
        "database registrations",
        not problems,
        "; ".join(problems)
        if problems
        else f"{len(members)} members x {len(GALERA_PORTS)} services registered with TTL",
    )


def _galera(
    ctx: SmokeContext, reading: Reading, members: list[ContainerSpec], report: Report
) -> None:
    def status(spec: ContainerSpec) -> Any:
        try:  # the state as listed a moment ago: no second inspect per member
            return member_status(_container(reading, ctx, spec), refresh=False)
        except docker.errors.NotFound:
            return None

    statuses = []
    for spec, st in zip(members, _each(members, status), strict=True):
        if st is None:
            report.add(f"galera {spec.node}", False, f"{spec.name}: container missing")
        else:
            statuses.append((spec, st))
    uuids = {st.cluster_uuid for _, st in statuses if st.running and st.cluster_uuid}
    for spec, st in statuses:
        if not st.running:
            report.add(f"galera {spec.node}", False, f"{spec.name}: down ({st.error})")
        elif not st.is_synced or st.cluster_size != len(members):
            report.add(
                f"galera {spec.node}",
                False,
                f"{spec.name}: state {st.state or '?'}, cluster size {st.cluster_size} "
                f"of {len(members)}{', ' + st.error if st.error else ''}",
            )
        else:
            report.add(
                f"galera {spec.node}",
                True,
                f"Synced, cluster size {st.cluster_size}, seqno {st.last_committed}",
            )
    if any(not st.is_synced for _, st in statuses) or len(statuses) < len(members):
        _recovery(ctx, members, report)  # a recovery's left-over keys only matter while one runs
    report.add(
        "galera cluster uuid",
        len(uuids) == 1,
        f"one cluster {next(iter(uuids))}"
        if len(uuids) == 1
        else f"{len(uuids)} cluster UUIDs: {', '.join(sorted(uuids)) or 'none'}",
    )


def _recovery(ctx: SmokeContext, members: list[ContainerSpec], report: Report) -> None:
    """While members wait in the automatic recovery, say who reported a position and who not."""
    if not members:
        return
    cluster = dict(members[0].env).get("CLUSTER_NAME", "cidemo")
    positions = ctx.registry.children(positions_dir(ctx.registry.prefix, cluster))
    if not positions:
        return
    reported = []
    for spec in members:
        raw = positions.get(spec.node)
        if raw is None:
            continue
        try:
            pos = json.loads(raw)
            reported.append(
                f"{spec.node} seqno {pos['seqno']} ({pos['state']}, generation {pos['generation']})"
            )
        except (ValueError, KeyError, TypeError):
            reported.append(f"{spec.node} unreadable")
    missing = [s.node for s in members if s.node not in positions]
    ignored = sorted(set(positions) - {s.node for s in members})
    detail = (
        f"automatic recovery under way: reported {', '.join(reported) or 'none'}; "
        f"missing {', '.join(missing) or 'none'}"
        + (f"; ignored (not members) {', '.join(ignored)}" if ignored else "")
    )
    report.add("galera recovery", False, detail)


def _proxy(
    ctx: SmokeContext, reading: Reading, members: list[ContainerSpec], report: Report
) -> None:
    proxy = next((s for s in ctx.specs if s.role == "dbproxy"), None)
    if proxy is None:
        return
    # The proxy follows registrations within 2 x TTL (its contract); give it that long to agree.
    deadline = time.monotonic() + 2 * ctx.ttl
    registered = sorted(r.value for r in reading.services("database_port"))
    while True:
        backends = _backends(reading, ctx, proxy)
        if backends is None or backends == registered or time.monotonic() >= deadline:
            break
        time.sleep(PROXY_POLL)
        registered = sorted(r.value for r in ctx.registry.services("database_port"))
    if backends is None:
        report.add("proxy backends", False, f"{proxy.name}: cannot read its backend set")
    else:
        report.add(
            "proxy backends",
            backends == registered,
            f"backends {backends} "
            + ("= registered" if backends == registered else f"!= registered {registered}"),
        )
    for service in PROXY_SERVICES:
        regs = [r for r in reading.services(service) if r.container == proxy.name]
        report.add(
            f"proxy {service} registered",
            bool(regs),
            regs[0].value if regs else f"no key under /services/{service}",
        )


def _backends(reading: Reading, ctx: SmokeContext, proxy: ContainerSpec) -> list[str] | None:
    """The proxy's backend set: HAProxy's list, or the servers of a rendered maxscale.cnf."""
    try:
        container = _container(reading, ctx, proxy)
        result = container.exec_run(["cat", "/run/cidemo/backends"])
        if result.exit_code == 0:
            return sorted(result.output.decode().split())
        result = container.exec_run(["cat", "/etc/maxscale.cnf"])
    except (docker.errors.APIError, docker.errors.NotFound):
        return None
    if result.exit_code != 0:
        return None
    return maxscale_backends(result.output.decode())


def maxscale_backends(config: str) -> list[str]:
    found, address = [], None
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "address":
            address = value.strip()
        elif key.strip() == "port" and address is not None:
            found.append(f"{address}:{value.strip()}")
            address = None
    return sorted(found)


def _row_everywhere(
    ctx: SmokeContext, reading: Reading, members: list[ContainerSpec], report: Report
) -> None:
    import pymysql  # with cryptography: imported here, beside the other checks' waits

    from cidemo_infra.galera.connection import guarded_connection

    token = uuid.uuid4().hex
    host, port = ctx.rw_endpoint
    try:
        conn = guarded_connection(
            tls_ca=ctx.tls_ca,
            host=host,
            port=port,
            user="root",
            password=ctx.root_password,
            connect_timeout=10,
            read_timeout=30,
            write_timeout=30,
            autocommit=True,
        )
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {SMOKE_DB}")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {SMOKE_DB}.rows (id BIGINT AUTO_INCREMENT "
                "PRIMARY KEY, token CHAR(32) NOT NULL, at TIMESTAMP DEFAULT NOW())"
            )
            cur.execute(f"INSERT INTO {SMOKE_DB}.rows (token) VALUES (%s)", (token,))
        conn.close()
    except pymysql.MySQLError as exc:
        report.add("row through proxy", False, f"write through {host}:{port} failed: {exc}")
        return

    def has_row(spec: ContainerSpec) -> bool:
        try:
            rc, out = run_sql(
                _container(reading, ctx, spec),
                f"SELECT COUNT(*) FROM {SMOKE_DB}.rows WHERE token='{token}'",
            )
        except (docker.errors.NotFound, *ENGINE_ERRORS):
            return False
        return rc == 0 and out.strip() == "1"

    missing = [s.node for s, ok in zip(members, _each(members, has_row), strict=True) if not ok]
    report.add(
        "row through proxy",
        not missing,
        f"row written via {host}:{port} "
        + (
            f"missing on {', '.join(missing)}"
            if missing
            else f"read back on all {len(members)} members"
        ),
    )


def _jenkins(
    ctx: SmokeContext, reading: Reading, members: list[ContainerSpec], report: Report
) -> None:
    spec = next((s for s in ctx.specs if s.role == "jenkins"), None)
    if spec is None:
        return
    if ctx.jenkins_url:
        answers = http_answers(ctx.jenkins_url)
        report.add(
            "jenkins http",
            answers,
            f"{ctx.jenkins_url} " + ("answers" if answers else "does not answer"),
        )
    regs = [r for r in reading.services(JENKINS_SERVICE) if r.container == spec.name]
    report.add(
        "jenkins registered",
        bool(regs),
        regs[0].value if regs else f"no key under /services/{JENKINS_SERVICE}",
    )


def _image_registry(
    ctx: SmokeContext, reading: Reading, members: list[ContainerSpec], report: Report
) -> None:
    """Healthy: its own check asked /v2/ over TLS and was told to authenticate."""
    spec = next((s for s in ctx.specs if s.role == "registry"), None)
    if spec is None:
        return
    try:
        container = _container(reading, ctx, spec)
    except docker.errors.NotFound:
        report.add("registry", False, f"container {spec.name} is missing")
        return
    health = listed_health(container.attrs.get("Status", ""))
    report.add(
        "registry",
        health == "healthy",
        f"{spec.name}: {health} (TLS, authentication required)",
    )


def listed_health(status: str) -> str:
    """The health a container listing shows in its status line ("Up 2 minutes (healthy)")."""
    for mark, health in (("(healthy)", "healthy"), ("(unhealthy)", "unhealthy")):
        if mark in status:
            return health
    return "starting" if "(health: starting)" in status else "none"
