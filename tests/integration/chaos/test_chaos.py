"""Chaos scenarios on the local site under a bounded write load through the proxy.

They share one site and run in order. Each asserts that no acknowledged write is lost or
duplicated on any member, and records a row of the table `make chaos` prints.
"""

from __future__ import annotations

import json
import time

import docker
import pytest

from cidemo_infra.registry.keys import Registry, guard_key, positions_dir
from tests.integration.chaos import harness
from tests.integration.chaos.conftest import RECOVERY_WAIT
from tests.integration.conftest import TestSite

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
LATE_SECONDS = 60


def registry(site: TestSite) -> Registry:
    return Registry(f"http://127.0.0.1:{site.data['services']['etcd']['port']}")


def guard(site: TestSite) -> dict:
    value = registry(site).get(guard_key("", site.name))
    assert value is not None
    return json.loads(value)


def assert_clean(outcome: harness.Outcome) -> None:
    assert outcome.acked > 0
    assert outcome.lost == 0, outcome
    assert outcome.duplicated == 0, outcome


def logs_since(container, since: float) -> str:
    return container.logs(since=int(since) - 1).decode(errors="replace")


def test_1_kill_one_member_rejoins_by_ist(
    engine: docker.DockerClient, chaos_site: TestSite
) -> None:
    site = chaos_site
    load = harness.Load(site, "kill-one")
    load.start()
    time.sleep(3)
    victim = harness.members(engine, site)[0]  # the proxy's read-write member
    t0 = time.time()
    before = harness.crash(victim)
    start = time.monotonic()
    harness.wait_for("restart", lambda: harness.restarted(victim, before))
    harness.wait_for("3 Synced", lambda: harness.all_synced(harness.members(engine, site), 3))
    recovered = time.monotonic() - start
    time.sleep(3)
    load.finish()
    outcome = harness.count(harness.members(engine, site), load)
    logs = logs_since(victim, t0)
    how = "by SST" if "SST succeeded" in logs or "State transfer required" in logs else "by IST"
    harness.record("1 kill -9 one member", outcome, recovered, load, f"rejoined {how}")
    assert_clean(outcome)
    assert "IST received" in logs and how == "by IST", logs[-3000:]


def crash_all(engine: docker.DockerClient, site: TestSite) -> list[str]:
    return [harness.crash(m) for m in harness.members(engine, site)]


def test_2a_kill_all_three_all_return(engine: docker.DockerClient, chaos_site: TestSite) -> None:
    site = chaos_site
    reg = registry(site)
    before_gen = guard(site)["generation"]
    load = harness.Load(site, "kill-all")
    load.start()
    time.sleep(3)
    state = harness.members(engine, site)[0].exec_run(
        ["sh", "-c", "sed -n 's/^uuid:[[:space:]]*//p' /var/lib/mysql/grastate.dat"]
    )
    # a forged position from a name outside the site's members must never count
    forged = {
        "uuid": state.output.decode().strip(),
        "seqno": 10**9,
        "generation": before_gen,
        "state": "waiting",
    }
    t0 = time.time()
    start = time.monotonic()
    crash_all(engine, site)
    reg.client.write(positions_dir("", site.name) + "/intruder", json.dumps(forged), ttl=300)
    harness.wait_for("3 Synced", lambda: harness.all_synced(harness.members(engine, site), 3))
    recovered = time.monotonic() - start
    time.sleep(3)
    load.finish()
    after = guard(site)
    outcome = harness.count(harness.members(engine, site), load)
    logs = "".join(logs_since(m, t0) for m in harness.members(engine, site))
    harness.record(
        "2a kill -9 all three, all return",
        outcome,
        recovered,
        load,
        f"bootstrapped from {after['node']} generation {after['generation']}",
    )
    assert after["generation"] == before_gen + 1, after
    assert after["node"] in ("deis-1", "deis-2", "deis-3")
    assert "ignoring the position key" in logs and "'intruder' is not an expected member" in logs
    assert logs.count("guard moved to generation") == 1, "exactly one bootstrap"
    assert_clean(outcome)
    reg.client.delete(positions_dir("", site.name) + "/intruder")


@pytest.mark.chaos_full
def test_2b_kill_all_three_one_returns_late(
    engine: docker.DockerClient, chaos_site: TestSite
) -> None:
    site = chaos_site
    before_gen = guard(site)["generation"]
    late = harness.members(engine, site)[2]
    load = harness.Load(site, "kill-all-late")
    load.start()
    time.sleep(3)
    harness.set_restart(late, "no")
    start = time.monotonic()
    crash_all(engine, site)
    try:
        time.sleep(LATE_SECONDS)
        late.start()
    finally:
        harness.set_restart(late, "unless-stopped")
    harness.wait_for("3 Synced", lambda: harness.all_synced(harness.members(engine, site), 3))
    recovered = time.monotonic() - start
    time.sleep(3)
    load.finish()
    after = guard(site)
    outcome = harness.count(harness.members(engine, site), load)
    harness.record(
        f"2b kill -9 all three, one back {LATE_SECONDS} s late",
        outcome,
        recovered,
        load,
        f"no deadlock; bootstrapped from {after['node']}",
    )
    assert after["generation"] == before_gen + 1, after
    assert_clean(outcome)


def test_2c_kill_all_three_one_never_returns(
    engine: docker.DockerClient, chaos_site: TestSite
) -> None:
    site = chaos_site
    before_gen = guard(site)["generation"]
    lost_member = harness.members(engine, site)[2]  # not the proxy's read-write member
    load = harness.Load(site, "kill-all-lost")
    load.start()
    time.sleep(3)
    harness.set_restart(lost_member, "no")
    start = time.monotonic()
    try:
        crash_all(engine, site)
        survivors = harness.members(engine, site)[:2]
        harness.wait_for("2 Synced", lambda: harness.all_synced(survivors, 2))
        recovered = time.monotonic() - start
        time.sleep(3)
        load.finish()
        after = guard(site)
        assert after["generation"] == before_gen + 1, after
        assert after["node"] != lost_member.labels["io.cidemo.node"]
        assert recovered >= RECOVERY_WAIT  # the survivors waited for the third before giving up
        outcome = harness.count(survivors, load)
    finally:
        harness.set_restart(lost_member, "unless-stopped")
        lost_member.start()
    harness.wait_for("3 Synced", lambda: harness.all_synced(harness.members(engine, site), 3))
    outcome = harness.count(harness.members(engine, site), load)  # the returning one too
    harness.record(
        "2c kill -9 all three, one never returns",
        outcome,
        recovered,
        load,
        f"two recovered after recovery_wait {RECOVERY_WAIT} s; third rejoined later",
    )
    assert_clean(outcome)


def test_2d_too_few_report_nothing_bootstraps(
    engine: docker.DockerClient, chaos_site: TestSite
) -> None:
    site = chaos_site
    before = guard(site)
    away = harness.members(engine, site)[1:]
    for m in away:
        harness.set_restart(m, "no")
    try:
        crash_all(engine, site)
        alone = harness.members(engine, site)[0]
        harness.wait_for(
            "the lone member's report",
            lambda: "only 1 of 3 members reported" in alone.logs(tail=50).decode(errors="replace"),
            limit=RECOVERY_WAIT + 120,
        )
        assert guard(site) == before
        status = alone.exec_run(["mariadb", "-e", "SELECT 1"])
        assert status.exit_code != 0, "no mariadbd may run before a majority reported"
        smoke = json.loads(site.cidemo("smoke", "--json").out)
        checks = {c["name"]: c for c in smoke["checks"]}
        assert not smoke["passed"]
        detail = checks["galera recovery"]["detail"]
        assert "missing deis-2, deis-3" in detail, detail
    finally:
        for m in away:
            harness.set_restart(m, "unless-stopped")
            m.start()
    harness.wait_for("3 Synced", lambda: harness.all_synced(harness.members(engine, site), 3))
    assert guard(site)["generation"] == before["generation"] + 1


def test_7_proxy_killed_comes_back_and_registers(
    engine: docker.DockerClient, chaos_site: TestSite
) -> None:
    site = chaos_site
    reg = registry(site)
    proxy = harness.container_of(engine, site, "dbproxy")
    load = harness.Load(site, "proxy-kill")
    load.start()
    time.sleep(3)
    before = harness.crash(proxy)
    start = time.monotonic()
    harness.wait_for("proxy restart", lambda: harness.restarted(proxy, before))
    harness.wait_for("lb_rw registered", lambda: bool(reg.services("lb_rw")))
    acked = len(load.acked)
    harness.wait_for("a write through the restarted proxy", lambda: len(load.acked) > acked)
    recovered = time.monotonic() - start
    load.finish()
    outcome = harness.count(harness.members(engine, site), load)
    harness.record("7 kill -9 the proxy", outcome, recovered, load, "restarted and registered")
    assert_clean(outcome)
