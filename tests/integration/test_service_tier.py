"""The local default end to end on the real engine: provision, converge, kill, heal, recover.

The tests of this module share one site and run in order, as an operator's day would.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pymysql
import pytest
import requests

from cidemo_infra.databases.database import connect
from cidemo_infra.placement import firewall
from cidemo_infra.tls.pki import ensure_pki
from tests.conftest import run_cidemo
from tests.integration.conftest import TestSite, make_site, remove_site

pytestmark = pytest.mark.integration
WRITE_LOOP_MAX_ROWS = 2000
WRITE_LOOP_MAX_SECONDS = 60.0


@pytest.fixture(scope="module")
def site(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestSite]:
    made = make_site(engine, tmp_path_factory.mktemp("tier"))
    yield made
    remove_site([engine], made.name)


def members(engine: docker.DockerClient, site: TestSite) -> list[Any]:
    flt = {"label": [f"io.cidemo.site={site.name}", "io.cidemo.role=galera"]}
    return sorted(engine.containers.list(all=True, filters=flt), key=lambda c: c.name)


def count_on(member: Any, sql: str) -> int:
    result = member.exec_run(["mariadb", "-N", "-B", "-e", sql])
    assert result.exit_code == 0, result.output
    return int(result.output.decode().strip())


def smoke(site: TestSite) -> dict[str, Any]:
    result = site.cidemo("smoke", "--json")
    report = json.loads(result.out)
    assert (result.rc == 0) == report["passed"]
    return {c["name"]: c for c in report["checks"]} | {"_passed": report["passed"]}


def assert_smoke_passes(site: TestSite) -> None:
    report = smoke(site)
    failed = {k: v["detail"] for k, v in report.items() if k != "_passed" and not v["passed"]}
    assert report["_passed"], failed


ALL_CHECKS = (
    "etcd",
    "database registrations",
    "galera cluster uuid",
    "proxy backends",
    "proxy lb_rw registered",
    "proxy lb_read registered",
    "row through proxy",
    "jenkins http",
    "jenkins registered",
)


def test_provision_from_nothing_passes_smoke(site: TestSite) -> None:
    result = site.cidemo("provision")
    assert result.rc == 0, result.err + result.out
    report = smoke(site)
    assert report["_passed"], report
    for name in ALL_CHECKS:
        assert report[name]["passed"], report[name]
    assert f"127.0.0.1:{site.rw_port}" in result.out


def test_second_provision_plans_nothing(site: TestSite) -> None:
    plan = site.cidemo("plan", "--json")
    assert plan.rc == 0, plan.err
    assert json.loads(plan.out)["actions"] == []
    again = site.cidemo("provision")
    assert again.rc == 0, again.err
    assert "no changes" in again.out
    # the no-op still runs every smoke check (at the same time, on one reading of the site)
    checks = [line.split("  ")[0] for line in again.out.splitlines() if "  ok  " in line]
    assert set(ALL_CHECKS) <= set(checks), again.out
    assert len([c for c in checks if c.startswith("galera deis-")]) == 3, again.out


def test_a_new_state_directory_beside_the_sites_volumes_is_refused(
    site: TestSite, tmp_path: Path
) -> None:
    """Another checkout (a state directory without the site's secrets) meets the data volumes:
    one line, exit 2, nothing placed or generated; the site still converged from its own."""
    other = tmp_path / "other-state"
    result = run_cidemo("provision", "--site", str(site.path), "--state-dir", str(other))
    assert result.rc == 2, result.err + result.out
    (line,) = result.err.strip().splitlines()
    assert f"site '{site.name}': engine " in line and "Galera data volumes" in line, line
    assert "no root password" in line and "destroy --purge" in line, line
    assert not (other / "secrets").exists()
    assert json.loads(site.cidemo("plan", "--json").out)["actions"] == []


def test_smoke_names_every_failure_and_one_provision_heals_them(engine, site: TestSite) -> None:
    """Two services down at once: the checks, run at the same time, fail each one that depends
    on them while the rest still passes; one provision starts both again (each in a lane of its
    own, behind its health gate) and the checks pass."""
    stopped = [f"cidemo-{site.name}-jenkins", f"cidemo-{site.name}-dbproxy"]
    for name in stopped:
        engine.containers.get(name).stop(timeout=30)
    report = smoke(site)
    assert not report["_passed"]
    for name in ("jenkins http", "proxy backends", "row through proxy"):
        assert not report[name]["passed"], report[name]
    for name in ("etcd", "galera cluster uuid"):
        assert report[name]["passed"], report[name]
    healed = site.cidemo("provision")
    assert healed.rc == 0, healed.err + healed.out
    for name in stopped:
        assert f"start {name}" in healed.err, healed.err  # progress lines go to stderr
    assert_smoke_passes(site)


def test_etcd_answers_only_clients_with_a_certificate_of_the_site(
    engine, site: TestSite, tmp_path: Path
) -> None:
    etcd = f"127.0.0.1:{site.data['services']['etcd']['port']}"
    tls = site.state / "tls"
    ca = str(tls / "ca.pem")
    with pytest.raises(requests.RequestException):  # plain HTTP: no answer at all
        requests.get(f"http://{etcd}/v2/keys/", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):  # no client certificate
        requests.get(f"https://{etcd}/v2/keys/", verify=ca, timeout=5)
    stranger = ensure_pki(tmp_path / "other", "stranger", {}, ("router",))
    with pytest.raises(requests.exceptions.SSLError):  # a certificate of another CA
        requests.get(
            f"https://{etcd}/v2/keys/",
            verify=ca,
            cert=(
                str(stranger.component_cert_path("router")),
                str(stranger.component_key_path("router")),
            ),
            timeout=5,
        )
    # what a preview would have done: it now has no way in; the site's own components do
    own = (str(tls / "clients/router/cert.pem"), str(tls / "clients/router/key.pem"))
    listed = requests.get(
        f"https://{etcd}/v2/keys/services/database_port", verify=ca, cert=own, timeout=5
    )
    assert listed.status_code == 200 and len(listed.json()["node"]["nodes"]) == 3
    # the members registered over TLS with their own certificate, and serve MySQL over TLS
    conn = connect(
        "127.0.0.1", site.rw_port, "root", site.secret("root_password"), tls_ca=tls / "ca.pem"
    )
    with conn.cursor() as cur:
        cur.execute("SHOW STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1].startswith("TLS")
    conn.close()
    chains = firewall.chains(site.name)
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout
    assert f"-A DOCKER-USER -j {chains.forward}" in rules
    assert f"-A INPUT -j {chains.input}" in rules


def test_root_over_the_local_socket_keeps_working(engine, site: TestSite) -> None:
    for member in members(engine, site):
        assert count_on(member, "SELECT 1") == 1


class Writer(threading.Thread):
    """Bounded writes through the proxy's read-write port; remembers what was acknowledged."""

    def __init__(self, port: int, password: str) -> None:
        super().__init__(daemon=True)
        self.port, self.password = port, password
        self.acked: list[int] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + WRITE_LOOP_MAX_SECONDS
        conn = None
        i = 0
        while not self.stop.is_set() and i < WRITE_LOOP_MAX_ROWS and time.monotonic() < deadline:
            i += 1
            try:
                if conn is None:
                    conn = pymysql.connect(
                        host="127.0.0.1",
                        port=self.port,
                        user="root",
                        password=self.password,
                        autocommit=True,
                        connect_timeout=3,
                        read_timeout=10,
                        write_timeout=10,
                    )
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO loadtest.w (n) VALUES (%s)", (i,))
                self.acked.append(i)
            except pymysql.MySQLError:
                self.errors += 1
                conn = None
                time.sleep(0.2)
            time.sleep(0.01)


def test_kill_a_member_under_writes_loses_no_acknowledged_write(engine, site: TestSite) -> None:
    password = site.secret("root_password")
    conn = pymysql.connect(
        host="127.0.0.1", port=site.rw_port, user="root", password=password, autocommit=True
    )
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS loadtest")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS loadtest.w (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
            " n INT NOT NULL)"
        )
    conn.close()
    writer = Writer(site.rw_port, password)
    writer.start()
    time.sleep(3)
    victim = members(engine, site)[0]  # the proxy's read-write member (lowest address)
    victim.kill()
    time.sleep(8)
    writer.stop.set()
    writer.join(timeout=30)
    assert len(writer.acked) > 50

    report = smoke(site)
    assert not report["_passed"]
    assert not report["galera deis-1"]["passed"]
    assert "down" in report["galera deis-1"]["detail"]

    heal = site.cidemo("provision")
    assert heal.rc == 0, heal.err + heal.out
    assert "start cidemo-" in heal.err
    logs = victim.logs(since=int(time.time()) - 300).decode(errors="replace")
    assert (
        "IST" in logs and "State transfer required" not in logs.split("joining")[-1]
    ) or "IST received" in logs
    assert_smoke_passes(site)
    acked = ",".join(map(str, writer.acked))
    for member in members(engine, site):
        got = count_on(member, f"SELECT COUNT(DISTINCT n) FROM loadtest.w WHERE n IN ({acked})")
        assert got == len(writer.acked), member.name


def test_kill_all_members_then_recover(engine, site: TestSite) -> None:
    before = count_on(members(engine, site)[0], "SELECT COUNT(*) FROM loadtest.w")
    for member in members(engine, site):
        member.kill()
    assert not smoke(site)["_passed"]
    result = site.cidemo("recover", "--yes")
    assert result.rc == 0, result.err + result.out
    assert "bootstrapping from" in result.err
    assert_smoke_passes(site)
    for member in members(engine, site):
        assert count_on(member, "SELECT COUNT(*) FROM loadtest.w") == before


def test_no_secret_in_logs_labels_env_or_output(engine, site: TestSite) -> None:
    values = [
        site.secret(n)
        for n in ("root_password", "sst_password", "monitor_password", "jenkins_admin_password")
    ]
    outputs = [site.cidemo(*cmd) for cmd in (("status",), ("smoke",), ("plan", "--json"))]
    texts = [o.out + o.err for o in outputs]
    flt = {"label": f"io.cidemo.site={site.name}"}
    for container in engine.containers.list(all=True, filters=flt):
        texts.append(container.logs().decode(errors="replace"))
        attrs = container.attrs
        texts.append(json.dumps(attrs["Config"].get("Labels")))
        texts.append(json.dumps(attrs["Config"].get("Env")))
        texts.append(json.dumps(attrs["Config"].get("Cmd")) + json.dumps(attrs.get("Args")))
        top = container.top() if container.status == "running" else {"Processes": []}
        texts.append(json.dumps(top["Processes"]))
    for value in values:
        assert len(value) >= 16
        assert not any(value in t for t in texts)


def test_destroy_removes_everything_and_twice_is_a_noop(engine, site: TestSite) -> None:
    result = site.cidemo("destroy", "--yes", "--purge")
    assert result.rc == 0, result.err
    flt = {"label": f"io.cidemo.site={site.name}"}
    assert engine.containers.list(all=True, filters=flt) == []
    assert engine.networks.list(filters=flt) == []
    assert engine.volumes.list(filters=flt) == []
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout
    assert firewall.chains(site.name).forward not in rules
    assert firewall.chains(site.name).input not in rules
    again = site.cidemo("destroy", "--yes", "--purge")
    assert again.rc == 0
    assert "no changes" in again.out
