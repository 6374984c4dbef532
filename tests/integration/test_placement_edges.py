"""Placement beyond the happy path: races, locks, unreachable engines, two engines, dry runs."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cidemo_infra import lifecycle
from cidemo_infra.console import Reporter
from cidemo_infra.galera.member import member_status
from cidemo_infra.registry.keys import guard_key
from cidemo_infra.site import load_site
from cidemo_infra.state import StateDir
from tests.integration.conftest import free_subnet, remove_site

pytestmark = pytest.mark.integration


def test_all_members_started_at_the_same_moment_bootstrap_exactly_once(
    engine, site_factory
) -> None:
    made = site_factory()
    site = load_site(made.path)
    session = lifecycle.open_session(
        site,
        StateDir.resolve(site.name, str(made.state)).ensure(),
        Reporter(quiet=True),
        build=True,
    )
    lifecycle.ensure_site_tls(session)  # what provision does first: the CA, the certificates
    executor = session.executor()
    actions = session.actions()
    executor.apply([a for a in actions if a.role in ("network", "etcd")])
    specs = [a.spec for a in actions if a.role == "galera" and a.spec is not None]
    ids = [executor.create(spec, start=False) for spec in specs]
    barrier = threading.Barrier(len(ids))

    def start(container_id: str) -> None:
        barrier.wait()
        engine.api.start(container_id)

    threads = [threading.Thread(target=start, args=(cid,)) for cid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 180
    containers = [engine.containers.get(cid) for cid in ids]
    while not all(member_status(c).is_synced for c in containers):
        assert time.monotonic() < deadline, [member_status(c) for c in containers]
        time.sleep(1)
    new_cluster = [c.name for c in containers if "--wsrep-new-cluster" in c.logs().decode()]
    assert len(new_cluster) == 1, new_cluster
    assert {member_status(c).cluster_size for c in containers} == {3}
    guard = session.registry().get(guard_key("", made.name))
    assert guard is not None
    assert json.loads(guard)["generation"] == 1


def test_plan_exit_codes_and_dry_run_change_nothing(engine, site_factory) -> None:
    made = site_factory()
    plan = made.cidemo("plan", "--json")
    assert plan.rc == 3, plan.err
    actions = json.loads(plan.out)["actions"]
    assert {(a["role"], a["action"]) for a in actions} >= {
        ("galera", "create"),
        ("network", "create-network"),
    }
    assert all(set(a) == {"node", "role", "action", "name", "reason"} for a in actions)
    dry = made.cidemo("provision", "--dry-run")
    assert dry.rc == 0, dry.err
    assert "create" in dry.out
    assert engine.containers.list(all=True, filters={"label": f"io.cidemo.site={made.name}"}) == []


def test_a_second_run_on_a_locked_site_fails_clearly(site_factory) -> None:
    made = site_factory()
    state = StateDir.resolve(made.name, str(made.state))
    with state.lock():
        result = made.cidemo("provision")
    assert result.rc == 1
    assert f"site '{made.name}' is locked by another cidemo run" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_unreachable_engine_is_one_line_naming_the_node(site_factory, tmp_path: Path) -> None:
    made = site_factory(engines={"local": {"url": f"unix://{tmp_path}/no-such.sock"}})
    result = made.cidemo("provision")
    assert result.rc == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert "node deis-1: Docker engine at unix://" in lines[0]
    assert "does not answer" in lines[0]


@pytest.mark.full_only  # multi-host placement also runs in make test on the lab's nodes
def test_members_on_two_engines_form_one_cluster(engine, second_engine, site_factory) -> None:
    url, client = second_engine
    subnet = free_subnet(engine)
    low, high = subnet.subnets(prefixlen_diff=1)
    # Two engines on one host route between their bridges; allow it for this site's subnet only.
    rule = ["DOCKER-USER", "-s", str(subnet), "-d", str(subnet), "-j", "ACCEPT"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    made = site_factory(
        network={"cidr": str(subnet)},
        engines={
            "main": {"url": "unix:///var/run/docker.sock", "subnet": str(low)},
            "second": {"url": url, "subnet": str(high)},
        },
        nodes=[
            {"name": "deis-1", "role": "deis", "engine": "main"},
            {"name": "deis-2", "role": "deis", "engine": "second"},
            {"name": "deis-3", "role": "deis", "engine": "second"},
            {"name": "standalone-1", "role": "standalone", "engine": "main"},
        ],
    )
    try:
        result = made.cidemo("provision", timeout=1200)
        assert result.rc == 0, result.err + result.out
        on_second = client.containers.list(filters={"label": f"io.cidemo.site={made.name}"})
        assert sorted(c.name for c in on_second) == [
            f"cidemo-{made.name}-galera-deis-2",
            f"cidemo-{made.name}-galera-deis-3",
        ]
        report = json.loads(made.cidemo("smoke", "--json").out)
        assert report["passed"], [c for c in report["checks"] if not c["passed"]]
        destroyed = made.cidemo("destroy", "--yes", "--purge")
        assert destroyed.rc == 0, destroyed.err
        assert (
            client.containers.list(all=True, filters={"label": f"io.cidemo.site={made.name}"}) == []
        )
    finally:
        remove_site([engine, client], made.name)
        subprocess.run(["iptables", "-D", *rule], check=False)
