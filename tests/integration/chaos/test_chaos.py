"""Chaos scenarios on the local site under a bounded write load through the proxy.

They share one site and run in order. Each asserts that no acknowledged write is lost or
duplicated on any member, and records a row of the table `make chaos` prints.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import etcd
import pytest
import yaml

from cidemo_infra.engines import negotiated_client
from cidemo_infra.registry.keys import Registry, guard_key, positions_dir
from tests.conftest import REPO, need
from tests.integration.chaos import harness
from tests.integration.chaos.conftest import RECOVERY_WAIT
from tests.integration.conftest import SpareEngine, TestSite, make_site, remove_site

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
LATE_SECONDS = 60


def registry(site: TestSite) -> Registry:
    return site.registry()


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
    # by IST: the donor streams the write-sets after the member's own recovered seqno (Galera
    # still runs the SST script then, in bypass mode, copying nothing)
    recovered_at = re.findall(r"recovered position [0-9a-f-]+:(\d+)", logs)
    assert recovered_at, logs[-3000:]
    ist = f"Prepared IST receiver for {int(recovered_at[-1]) + 1}-" in logs
    how = "by IST" if ist else "by full SST"
    harness.record("1 kill -9 one member", outcome, recovered, load, f"rejoined {how}")
    assert_clean(outcome)
    assert ist, logs[-3000:]


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


@pytest.mark.chaos_full
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


@pytest.mark.chaos_full
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


@pytest.mark.chaos_full
def test_4_partition_one_member_then_heal(
    engine: docker.DockerClient, chaos_site: TestSite
) -> None:
    site = chaos_site
    net = engine.networks.get(f"cidemo-{site.name}")
    victim = harness.members(engine, site)[0]  # the proxy's read-write member
    ip = harness.address_of(victim, net.name)
    load = harness.Load(site, "partition")
    load.start()
    time.sleep(3)
    start = time.monotonic()
    net.disconnect(victim, force=True)
    try:
        survivors = harness.members(engine, site)[1:]
        majority = harness.wait_for("2 Synced", lambda: harness.all_synced(survivors, 2))
        harness.wait_for(
            "the proxy dropping it",
            lambda: f"{ip}:3306" not in harness.proxy_backends(engine, site),
        )
        dropped = time.monotonic() - start
    finally:
        net.connect(victim, ipv4_address=ip, aliases=[victim.name])
    healed = time.monotonic()
    harness.wait_for("3 Synced", lambda: harness.all_synced(harness.members(engine, site), 3))
    rejoined = time.monotonic() - healed
    harness.wait_for(
        "back in the proxy", lambda: f"{ip}:3306" in harness.proxy_backends(engine, site)
    )
    time.sleep(3)
    load.finish()
    outcome = harness.count(harness.members(engine, site), load)
    ttl = site.data["services"]["galera"]["ttl"]
    harness.record(
        "4 partition one member, then heal",
        outcome,
        time.monotonic() - start,
        load,
        f"majority Primary after {majority:.1f} s; proxy dropped it after {dropped:.1f} s"
        f" (contract 2xTTL = {2 * ttl} s); rejoined {rejoined:.1f} s after the heal",
    )
    assert_clean(outcome)


@pytest.mark.chaos_full
def test_5_etcd_down_longer_than_the_ttl(engine: docker.DockerClient, chaos_site: TestSite) -> None:
    site = chaos_site
    etcd_container = harness.container_of(engine, site, "etcd")
    ttl = site.data["services"]["galera"]["ttl"]
    before = harness.proxy_backends(engine, site)
    assert len(before) == 3
    load = harness.Load(site, "etcd-down")
    load.start()
    time.sleep(3)
    start = time.monotonic()
    etcd_container.stop(timeout=10)
    try:
        acked = len(load.acked)
        time.sleep(2 * ttl)
        during = harness.proxy_backends(engine, site)
        written_during = len(load.acked) - acked
    finally:
        etcd_container.start()
    reg = registry(site)

    def registered() -> bool:
        try:
            return len(reg.services("database_port")) == 3 and bool(reg.services("lb_rw"))
        except etcd.EtcdException:  # etcd still starting
            return False

    harness.wait_for("registrations back", registered)
    recovered = time.monotonic() - start
    time.sleep(3)
    load.finish()
    outcome = harness.count(harness.members(engine, site), load)
    harness.record(
        f"5 etcd down {2 * ttl} s (TTL {ttl} s)",
        outcome,
        recovered,
        load,
        f"{written_during} writes acknowledged while etcd was down;"
        f" proxy kept {len(during)} backends",
    )
    assert during == before, "the proxy must keep its last known backends"
    assert written_during > 0, "members keep serving while etcd is down"
    assert harness.all_synced(harness.members(engine, site), 3)
    assert_clean(outcome)


@pytest.mark.chaos_full
def test_6_rolling_replacement_with_a_new_image_tag(
    engine: docker.DockerClient, chaos_site: TestSite
) -> None:
    site = chaos_site
    current = harness.members(engine, site)[0].attrs["Config"]["Image"]
    new_tag = f"cidemo-chaos/galera:{site.name}-v2"
    engine.images.get(current).tag(new_tag)
    site.data["services"]["galera"]["image"] = new_tag
    site.path.write_text(yaml.safe_dump(site.data))
    load = harness.Load(site, "rolling")
    load.start()
    time.sleep(3)
    start = time.monotonic()
    try:
        result = harness.provision(site)
        recovered = time.monotonic() - start
        time.sleep(3)
    finally:
        load.finish()
    assert result.rc == 0, result.err + result.out
    assert result.err.count("replace cidemo-") == 3, result.err
    members = harness.members(engine, site)
    assert all(m.attrs["Config"]["Image"] == new_tag for m in members)
    assert harness.all_synced(members, 3)
    outcome = harness.count(members, load)
    harness.record(
        "6 rolling replacement (new image tag)",
        outcome,
        recovered,
        load,
        "one member at a time, quorum kept",
    )
    assert_clean(outcome)


@pytest.mark.chaos_full
def test_8_provision_killed_in_placement_then_run_again(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    site = make_site(engine, tmp_path)
    site.data["services"]["jenkins"]["enabled"] = False
    site.path.write_text(yaml.safe_dump(site.data))
    flt = {"label": [f"io.cidemo.site={site.name}", "io.cidemo.role=galera"]}
    cmd = [sys.executable, "-m", "cidemo_infra", "provision", "--site", str(site.path)]
    cmd += ["--state-dir", str(site.state)]
    try:
        with open(tmp_path / "first.log", "wb") as log:
            first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            # in the middle of placement: the first member is up, the second being created
            harness.wait_for(
                "a second member created",
                lambda: (
                    first.poll() is not None
                    or len(engine.containers.list(all=True, filters=flt)) >= 2
                ),
            )
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        finally:
            first.kill()
            first.wait(timeout=30)
        start = time.monotonic()
        again = harness.provision(site)
        recovered = time.monotonic() - start
        assert again.rc == 0, again.err + again.out
        members = sorted(engine.containers.list(all=True, filters=flt), key=lambda c: c.name)
        assert [m.labels["io.cidemo.node"] for m in members] == ["deis-1", "deis-2", "deis-3"]
        assert harness.all_synced(members, 3)
        bootstraps = sum(
            1
            for m in members
            for line in m.logs().decode(errors="replace").splitlines()
            if line.startswith("[galera ")
            and "with --wsrep-new-cluster" in line
            and "bootstrapping" in line
        )
        assert bootstraps == 1, "exactly one bootstrap, by the first member"
        assert guard(site)["generation"] == 1
        harness.ROWS.append(
            harness.Row(
                "8 kill -9 provision in placement, run again",
                0,
                0,
                0,
                0,
                recovered,
                0,
                "converged: 3 members, one bootstrap, guard generation 1 (no write load)",
            )
        )
    finally:
        remove_site([engine], site.name)


ENGINE3_ROOT = Path("/tmp/cidemo-chaos-engine3")
ENGINE3_MAX_SECONDS = 600.0


@pytest.fixture
def spare_site(
    engine: docker.DockerClient, tmp_path: Path
) -> Iterator[tuple[SpareEngine, TestSite]]:
    """A site whose every node sits on a dockerd of the test's own, which the test may stop and
    start again; the site, the dockerd, its root and its bridges are removed whatever happens."""
    need(shutil.which("dockerd") is not None and os.geteuid() == 0, "dockerd and root")
    url = f"unix://{ENGINE3_ROOT / 'docker.sock'}"
    site = make_site(engine, tmp_path)
    subnet = site.data["network"]["cidr"]
    site.data["engines"] = {"spare": {"url": url, "subnet": subnet}}
    site.data["nodes"] = [
        {"name": n, "role": r, "engine": "spare"}
        for n, r in [
            ("deis-1", "deis"),
            ("deis-2", "deis"),
            ("deis-3", "deis"),
            ("standalone-1", "standalone"),
        ]
    ]
    site.data["services"]["galera"]["recovery_wait"] = RECOVERY_WAIT
    site.data["services"]["jenkins"]["enabled"] = False
    site.path.write_text(yaml.safe_dump(site.data))
    # bridged traffic may cross the host's FORWARD chain (the machine's dockerd drops by default)
    # and the spare dockerd writes no rules: allow the site's own subnet, for this test only
    rule = ["DOCKER-USER", "-s", subnet, "-d", subnet, "-j", "ACCEPT"]
    subprocess.run(["iptables", "-I", *rule], check=True, timeout=30)
    try:
        spare = SpareEngine(ENGINE3_ROOT, url, lambda: negotiated_client(url, node="engine3"))
    except BaseException:
        subprocess.run(["iptables", "-D", *rule], check=False, timeout=30)
        raise
    try:
        spare.start()
        yield spare, site
    finally:
        emptied = False
        try:
            if spare.client is None:  # stopped by the test and not back: start it to empty it
                with contextlib.suppress(Exception):
                    spare.start()
            if spare.client is not None:
                flt = {"label": f"io.cidemo.site={site.name}"}
                for c in spare.client.containers.list(all=True, filters=flt):
                    (tmp_path / f"{c.name}.log").write_bytes(c.logs())  # for a post-mortem
                remove_site([spare.client], site.name)
                emptied = True  # the dockerd removed the site network's bridge itself
        finally:
            spare.close()
            if not emptied:
                remove_bridges_in(ipaddress.IPv4Network(subnet))
            subprocess.run(["iptables", "-D", *rule], check=False, timeout=30)


def remove_bridges_in(subnet: ipaddress.IPv4Network) -> None:
    """The site network's bridge, left behind only when the spare dockerd could not remove it."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show"], capture_output=True, check=True, timeout=30
    ).stdout
    for link in json.loads(out):
        addresses = [ipaddress.IPv4Address(a["local"]) for a in link.get("addr_info", [])]
        if link["ifname"].startswith("br-") and any(a in subnet for a in addresses):
            subprocess.run(["ip", "link", "del", link["ifname"]], check=False, timeout=30)


@pytest.mark.chaos_full
def test_3_engine_restart_the_site_comes_back(
    spare_site: tuple[SpareEngine, TestSite],
) -> None:
    spare, site = spare_site
    deadline = time.monotonic() + ENGINE3_MAX_SECONDS
    result = harness.provision(site)
    assert result.rc == 0, result.err + result.out
    assert spare.client is not None
    flt = {"label": f"io.cidemo.site={site.name}"}
    on_spare = spare.client.containers.list(filters=flt)
    assert {c.labels["io.cidemo.role"] for c in on_spare} >= {"etcd", "galera", "dbproxy"}
    harness.prepare_schema(site)  # through the port the spare dockerd publishes on 127.0.0.1
    before_gen = guard(site)["generation"]
    load = harness.Load(site, "engine-restart")
    load.start()
    try:
        time.sleep(3)
        assert load.acked, "no write acknowledged through the proxy before the fault"
        start = time.monotonic()
        spare.stop()  # the host shuts down: the daemon stops every container, then exits
        client = spare.start()  # and boots: no command, only the restart policies
        remaining = deadline - time.monotonic()
        harness.wait_for(
            "3 Primary and Synced",
            lambda: harness.all_synced(harness.members(client, site), 3),
            limit=remaining,
        )
        recovered = time.monotonic() - start
        reg = registry(site)  # etcd, through the port the spare dockerd publishes again

        def registered() -> bool:
            try:
                return len(reg.services("database_port")) == 3 and bool(reg.services("lb_rw"))
            except etcd.EtcdException:  # etcd still starting
                return False

        harness.wait_for("registrations back", registered, limit=deadline - time.monotonic())
        acked = len(load.acked)
        harness.wait_for(
            "a write through the proxy after the restart",
            lambda: len(load.acked) > acked,
            limit=deadline - time.monotonic(),
        )
        time.sleep(3)
    finally:
        load.finish()
    members = harness.members(client, site)
    outcome = harness.count(members, load)
    after = guard(site)
    harness.record(
        "3 engine restart (whole host)",
        outcome,
        recovered,
        load,
        f"no command; bootstrapped from {after['node']} generation {after['generation']}",
    )
    statuses = {c.name: c.status for c in client.containers.list(all=True, filters=flt)}
    assert len(statuses) == len(on_spare), statuses
    assert set(statuses.values()) == {"running"}, statuses
    assert after["generation"] == before_gen + 1, after
    assert_clean(outcome)
