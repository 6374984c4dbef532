"""Observed state and the pure diff from desired to observed: a list of actions, nothing done."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cidemo_infra.placement.specs import ContainerSpec, NetworkSpec

ROLE_ORDER = {"network": 0, "etcd": 1, "galera": 2, "dbproxy": 3, "jenkins": 4}


@dataclass(frozen=True)
class ObservedContainer:
    name: str
    engine: str
    node: str
    role: str
    spec_hash: str
    status: str  # created | running | exited | paused | restarting | dead
    exit_code: int = 0


@dataclass(frozen=True)
class ObservedNetwork:
    name: str
    engine: str


@dataclass(frozen=True)
class Action:
    kind: str  # create | replace | start | remove | create-network | remove-network
    name: str
    node: str
    role: str
    engine: str
    reason: str
    spec: ContainerSpec | None = None
    network: NetworkSpec | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "role": self.role,
            "action": self.kind,
            "name": self.name,
            "reason": self.reason,
        }


def diff(
    desired: list[ContainerSpec],
    networks: list[NetworkSpec],
    observed: list[ObservedContainer],
    observed_networks: list[ObservedNetwork],
) -> list[Action]:
    """The actions that turn `observed` into `desired`, in the order they must run."""
    actions: list[Action] = []
    have_nets = {(n.engine, n.name) for n in observed_networks}
    for net in networks:
        if (net.engine, net.name) not in have_nets:
            actions.append(
                Action(
                    "create-network",
                    net.name,
                    "-",
                    "network",
                    net.engine,
                    f"missing (subnet {net.subnet})",
                    network=net,
                )
            )
    by_name = {(o.engine, o.name): o for o in observed}
    wanted = {(s.engine, s.name) for s in desired}
    for spec in desired:
        seen = by_name.get((spec.engine, spec.name))
        action = _container_action(spec, seen)
        if action is not None:
            actions.append(action)
    for obs in observed:
        if (obs.engine, obs.name) not in wanted:
            actions.append(
                Action("remove", obs.name, obs.node, obs.role, obs.engine, "no longer in the site")
            )
    wanted_nets = {(n.engine, n.name) for n in networks}
    for obs_net in observed_networks:
        if (obs_net.engine, obs_net.name) not in wanted_nets:
            actions.append(
                Action(
                    "remove-network",
                    obs_net.name,
                    "-",
                    "network",
                    obs_net.engine,
                    "no longer in the site",
                )
            )
    return actions


def _container_action(spec: ContainerSpec, seen: ObservedContainer | None) -> Action | None:
    def act(kind: str, reason: str) -> Action:
        return Action(kind, spec.name, spec.node, spec.role, spec.engine, reason, spec=spec)

    if seen is None:
        return act("create", "missing")
    if seen.spec_hash != spec.spec_hash:
        return act("replace", f"spec changed ({seen.spec_hash} -> {spec.spec_hash})")
    if seen.status != "running":
        detail = f"exit code {seen.exit_code}" if seen.status in ("exited", "dead") else ""
        return act("start", f"{seen.status}" + (f", {detail}" if detail else ""))
    return None


@dataclass(frozen=True)
class Phases:
    """How the executor runs a list of actions: `networks` first, in order; then every lane at
    the same time, each lane's actions in order; `removals` last, in order."""

    networks: list[Action]
    lanes: list[list[Action]]
    removals: list[Action]


def phases(actions: list[Action]) -> Phases:
    """Galera members' actions form one lane, in their order (one member at a time: quorum and
    the bootstrap first); every other container's action is a lane of its own."""
    networks = [a for a in actions if a.kind == "create-network"]
    removals = [a for a in actions if a.kind in ("remove", "remove-network")]
    placed = [a for a in actions if a not in networks and a not in removals]
    members = [a for a in placed if a.role == "galera"]
    lanes = ([members] if members else []) + [[a] for a in placed if a.role != "galera"]
    return Phases(networks, lanes, removals)
