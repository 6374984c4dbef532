"""The smoke checks of a placed site: etcd, registrations, Galera, the proxy, a row, Jenkins,
the image registry."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import docker
import docker.errors
import pymysql

from cidemo_infra.checks.report import Report
from cidemo_infra.galera.member import member_status, run_sql
from cidemo_infra.placement.specs import GALERA_PORTS, ContainerSpec
from cidemo_infra.probes import http_answers
from cidemo_infra.registry.keys import JENKINS_SERVICE, PROXY_SERVICES, Registry, positions_dir

SMOKE_DB = "cidemo_smoke"


@dataclass
class SmokeContext:
    registry: Registry
    clients: Mapping[str, docker.DockerClient]
    specs: list[ContainerSpec]
    rw_endpoint: tuple[str, int]  # where the tool reaches the proxy's read-write port
    root_password: str
    jenkins_url: str | None
    ttl: int
    unreachable: Mapping[str, str] = field(default_factory=dict)  # engine -> why it does not answer


def run_smoke(ctx: SmokeContext) -> Report:
    report = Report()
    for engine, why in sorted(ctx.unreachable.items()):
        report.add(f"node {engine}", False, why)
    ok, detail = ctx.registry.is_healthy()
    report.add("etcd", ok, detail)
    if not ok:
        return report
    members = [s for s in ctx.specs if s.role == "galera"]
    checks: list[Callable[[SmokeContext, list[ContainerSpec], Report], None]] = [
        _registrations,
        _galera,
        _proxy,
        _row_everywhere,
        _jenkins,
        _image_registry,
    ]
    for check in checks:
        check(ctx, members, report)
    return report


def _container(ctx: SmokeContext, spec: ContainerSpec) -> docker.models.containers.Container:
    if spec.engine in ctx.unreachable:  # checked as missing, like a removed container
        raise docker.errors.NotFound(f"node {spec.node}: its engine does not answer")
    return ctx.clients[spec.engine].containers.get(spec.name)


def _registrations(ctx: SmokeContext, members: list[ContainerSpec], report: Report) -> None:
    expected = {s.name: dict(s.env)["NODE_ADDRESS"] for s in members}
    problems = []
    for service, port in GALERA_PORTS.items():
        regs = ctx.registry.services(service)
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


def _galera(ctx: SmokeContext, members: list[ContainerSpec], report: Report) -> None:
    statuses = []
    for spec in members:
        try:
            statuses.append((spec, member_status(_container(ctx, spec))))
        except docker.errors.NotFound:
            report.add(f"galera {spec.node}", False, f"{spec.name}: container missing")
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


def _proxy(ctx: SmokeContext, members: list[ContainerSpec], report: Report) -> None:
    proxy = next((s for s in ctx.specs if s.role == "dbproxy"), None)
    if proxy is None:
        return
    # The proxy follows registrations within 2 x TTL (its contract); give it that long to agree.
    deadline = time.monotonic() + 2 * ctx.ttl
    while True:
        registered = sorted(r.value for r in ctx.registry.services("database_port"))
        backends = _backends(ctx, proxy)
        if backends is None or backends == registered or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
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
        regs = [r for r in ctx.registry.services(service) if r.container == proxy.name]
        report.add(
            f"proxy {service} registered",
            bool(regs),
            regs[0].value if regs else f"no key under /services/{service}",
        )


def _backends(ctx: SmokeContext, proxy: ContainerSpec) -> list[str] | None:
    """The proxy's backend set: HAProxy's list, or the servers of a rendered maxscale.cnf."""
    try:
        container = _container(ctx, proxy)
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


def _row_everywhere(ctx: SmokeContext, members: list[ContainerSpec], report: Report) -> None:
    token = uuid.uuid4().hex
    host, port = ctx.rw_endpoint
    try:
        conn = pymysql.connect(
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
    missing = []
    for spec in members:
        try:
            rc, out = run_sql(
                _container(ctx, spec), f"SELECT COUNT(*) FROM {SMOKE_DB}.rows WHERE token='{token}'"
            )
        except (docker.errors.NotFound, docker.errors.APIError):
            rc, out = 1, ""
        if rc != 0 or out.strip() != "1":
            missing.append(spec.node)
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


def _jenkins(ctx: SmokeContext, members: list[ContainerSpec], report: Report) -> None:
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
    regs = [r for r in ctx.registry.services(JENKINS_SERVICE) if r.container == spec.name]
    report.add(
        "jenkins registered",
        bool(regs),
        regs[0].value if regs else f"no key under /services/{JENKINS_SERVICE}",
    )


def _image_registry(ctx: SmokeContext, members: list[ContainerSpec], report: Report) -> None:
    """Healthy: its own check asked /v2/ over TLS and was told to authenticate."""
    spec = next((s for s in ctx.specs if s.role == "registry"), None)
    if spec is None:
        return
    try:
        container = _container(ctx, spec)
    except docker.errors.NotFound:
        report.add("registry", False, f"container {spec.name} is missing")
        return
    health = container.attrs.get("State", {}).get("Health", {}).get("Status", "none")
    report.add(
        "registry",
        health == "healthy",
        f"{spec.name}: {health} (TLS, authentication required)",
    )
