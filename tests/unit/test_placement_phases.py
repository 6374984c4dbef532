"""How the executor orders a plan's actions (pure): networks first, the Galera members one at a
time in one lane, every other container in a lane of its own, removals last."""

from __future__ import annotations

import pytest

from cidemo_infra.placement.plan import Action, phases

pytestmark = pytest.mark.unit


def _act(kind: str, name: str, role: str) -> Action:
    return Action(kind, name, "n", role, "local", "test")


def test_members_share_one_lane_in_order_and_the_others_run_beside_them() -> None:
    net = _act("create-network", "net", "network")
    etcd = _act("create", "etcd", "etcd")
    boot, join1, join2 = (_act("create", f"galera-{i}", "galera") for i in (2, 1, 3))
    proxy = _act("replace", "proxy", "dbproxy")
    jenkins = _act("start", "jenkins", "jenkins")
    gone = _act("remove", "old", "router")
    gone_net = _act("remove-network", "oldnet", "network")
    plan = phases([net, etcd, boot, join1, proxy, join2, jenkins, gone, gone_net])
    assert plan.networks == [net]
    assert plan.lanes == [[boot, join1, join2], [etcd], [proxy], [jenkins]]
    assert plan.removals == [gone, gone_net]


def test_no_galera_action_means_no_empty_lane() -> None:
    proxy = _act("create", "proxy", "dbproxy")
    assert phases([proxy]).lanes == [[proxy]]
    assert phases([]).lanes == []
