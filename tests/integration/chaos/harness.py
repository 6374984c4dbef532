"""The chaos suite's tools: a bounded write load through the proxy, crashes, counts, the table.

A write counts as acknowledged only when its COMMIT returned OK. After a scenario every member is
counted: an acknowledged write missing on any member is lost; a write present twice is duplicated.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import pymysql

from cidemo_infra.galera.member import member_status
from tests.integration.conftest import TestSite, provision_converged

LOAD_MAX_WRITES = 20000
LOAD_MAX_SECONDS = 600.0
WAIT_MAX_SECONDS = 420.0


@dataclass
class Row:
    scenario: str
    acked: int
    found: int
    lost: int
    duplicated: int
    recovered_s: float | None  # fault to every member Primary and Synced again
    failed_requests: int
    detail: str = ""


ROWS: list[Row] = []
COLUMNS = ("scenario", "acked", "found", "lost", "duplicated", "recovered_s", "failed", "detail")


def table(rows: list[Row]) -> str:
    """One table, columns separated by `|`."""
    lines = [" | ".join(COLUMNS)]
    for r in rows:
        rec = "-" if r.recovered_s is None else f"{r.recovered_s:.1f}"
        cells = [r.scenario, r.acked, r.found, r.lost, r.duplicated, rec, r.failed_requests]
        lines.append(" | ".join(str(c) for c in [*cells, r.detail or "-"]))
    return "\n".join(lines)


def members(engine: docker.DockerClient, site: TestSite) -> list[Any]:
    flt = {"label": [f"io.cidemo.site={site.name}", "io.cidemo.role=galera"]}
    return sorted(engine.containers.list(all=True, filters=flt), key=lambda c: c.name)


def container_of(engine: docker.DockerClient, site: TestSite, role: str) -> Any:
    flt = {"label": [f"io.cidemo.site={site.name}", f"io.cidemo.role={role}"]}
    return engine.containers.list(all=True, filters=flt)[0]


def crash(container: Any) -> str:
    """kill -9 of the container's main process from the host: Docker sees a crash, not a stop,
    so its restart policy starts it again. Returns the StartedAt it had."""
    container.reload()
    started = container.attrs["State"]["StartedAt"]
    os.kill(int(container.attrs["State"]["Pid"]), signal.SIGKILL)
    return str(started)


def set_restart(container: Any, policy: str) -> None:
    container.update(restart_policy={"Name": policy})


def wait_for(what: str, check: Callable[[], bool], limit: float = WAIT_MAX_SECONDS) -> float:
    """Poll `check` every second until true; the seconds it took. Fails naming `what`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, f"{what}: not within {limit:.0f} s"
        time.sleep(1.0)
    return time.monotonic() - start


def restarted(container: Any, before: str) -> bool:
    container.reload()
    return container.status == "running" and container.attrs["State"]["StartedAt"] != before


def all_synced(containers: list[Any], size: int) -> bool:
    statuses = [member_status(c) for c in containers]
    return all(s.is_synced and s.cluster_size == size for s in statuses)


class Load(threading.Thread):
    """Bounded writes through the proxy's read-write port, each its own transaction."""

    def __init__(self, site: TestSite, scenario: str) -> None:
        super().__init__(daemon=True)
        self.port, self.scenario = site.rw_port, scenario
        self.password = site.secret("root_password")
        self.acked: list[int] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + LOAD_MAX_SECONDS
        conn = None
        n = 0
        while not self.stop.is_set() and n < LOAD_MAX_WRITES and time.monotonic() < deadline:
            n += 1
            try:
                if conn is None:
                    conn = pymysql.connect(
                        host="127.0.0.1",
                        port=self.port,
                        user="root",
                        password=self.password,
                        connect_timeout=3,
                        read_timeout=10,
                        write_timeout=10,
                    )
                conn.begin()
                with conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO chaos.w (scenario, n) VALUES (%s, %s)", (self.scenario, n)
                    )
                conn.commit()
                self.acked.append(n)
            except (pymysql.MySQLError, OSError):
                self.failed += 1
                if conn is not None:
                    with contextlib.suppress(Exception):  # a broken connection may fail to close
                        conn.close()
                conn = None
                time.sleep(0.2)
            time.sleep(0.02)
        if conn is not None:
            conn.close()

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the load did not stop within 60 s"


def prepare_schema(site: TestSite) -> None:
    conn = pymysql.connect(
        host="127.0.0.1",
        port=site.rw_port,
        user="root",
        password=site.secret("root_password"),
        autocommit=True,
    )
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS chaos")
        # no unique key on (scenario, n): a write applied twice must show up as a duplicate
        cur.execute(
            "CREATE TABLE IF NOT EXISTS chaos.w (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
            " scenario VARCHAR(32) NOT NULL, n INT NOT NULL, KEY (scenario, n))"
        )
    conn.close()


def counts_on(container: Any, scenario: str) -> dict[int, int]:
    sql = f"SELECT n, COUNT(*) FROM chaos.w WHERE scenario = '{scenario}' GROUP BY n"
    result = container.exec_run(["mariadb", "-N", "-B", "-e", sql])
    assert result.exit_code == 0, f"{container.name}: {result.output!r}"
    out: dict[int, int] = {}
    for line in result.output.decode().split("\n"):
        if line.strip():
            n, c = line.split("\t")
            out[int(n)] = int(c)
    return out


@dataclass
class Outcome:
    acked: int
    found: int
    lost: int
    duplicated: int
    per_member: dict[str, int] = field(default_factory=dict)


def count(containers: list[Any], load: Load) -> Outcome:
    """What every member holds of the scenario's writes against what the client saw acknowledged."""
    acked = set(load.acked)
    assert len(acked) == len(load.acked)
    lost: set[int] = set()
    duplicated = 0
    found = 0
    per_member = {}
    for c in containers:
        rows = counts_on(c, load.scenario)
        per_member[c.name] = len(rows)
        lost |= acked - set(rows)
        duplicated = max(duplicated, sum(v - 1 for v in rows.values()))
        found = max(found, len(rows))
    return Outcome(len(acked), found, len(lost), duplicated, per_member)


def record(
    scenario: str, outcome: Outcome, recovered: float | None, load: Load, detail: str
) -> Row:
    row = Row(
        scenario,
        outcome.acked,
        outcome.found,
        outcome.lost,
        outcome.duplicated,
        recovered,
        load.failed,
        detail,
    )
    ROWS.append(row)
    print(table([row]))
    return row


def proxy_backends(engine: docker.DockerClient, site: TestSite) -> list[str]:
    """The members the proxy sends traffic to (its rendered set)."""
    proxy = container_of(engine, site, "dbproxy")
    result = proxy.exec_run(["cat", "/run/cidemo/backends"])
    return sorted(result.output.decode().split()) if result.exit_code == 0 else []


def address_of(container: Any, network: str) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


provision = provision_converged
