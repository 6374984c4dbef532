"""Whole-cluster recovery: bootstrap from the member with the highest committed seqno.

Only this code moves the bootstrap guard after the cluster's first start: it compares every
member's recovered position (the image's `galera-position`, run in a one-off container on the
member's volume) and swaps the guard, atomically, to name the most advanced member with a new
generation. That member bootstraps (handling safe_to_bootstrap); the others join it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from cidemo_infra.errors import PlacementError
from cidemo_infra.registry.keys import Registry, guard_key

if TYPE_CHECKING:  # placement builds on this package; only the spec's shape is used here
    from cidemo_infra.placement.specs import ContainerSpec


@dataclass(frozen=True)
class Position:
    node: str
    uuid: str
    seqno: int
    safe_to_bootstrap: bool
    generation: int  # the guard generation this member last bootstrapped (0: never)


def read_position(client: docker.DockerClient, spec: ContainerSpec) -> Position:
    volume = next(v for v, path in spec.volumes if path == "/var/lib/mysql")
    try:
        out = client.containers.run(
            spec.image,
            entrypoint=["galera-position"],
            environment=dict(spec.env),
            volumes={volume: {"bind": "/var/lib/mysql", "mode": "rw"}},
            remove=True,
            labels={"io.cidemo.site": spec.site, "io.cidemo.role": "galera-position"},
            network_disabled=True,
        )
    except docker.errors.ContainerError as exc:
        raise PlacementError(
            f"node {spec.node}: reading the Galera position of {volume} failed "
            f"(exit {exc.exit_status})"
        ) from None
    line = out.decode(errors="replace").strip().splitlines()[-1]
    data: dict[str, Any] = json.loads(line)
    return Position(
        spec.node,
        str(data.get("uuid", "")),
        int(data.get("seqno", -1)),
        bool(int(data.get("safe_to_bootstrap", 0))),
        int(data.get("bootstrap_generation", 0)),
    )


def choose_bootstrap(positions: list[Position]) -> Position:
    """Highest seqno wins; on a tie a member Galera marked safe, then the first in site order."""
    if not positions:
        raise PlacementError("no Galera member has data to recover from")
    uuids = {p.uuid for p in positions if p.seqno >= 0}
    if len(uuids) > 1:
        raise PlacementError(
            f"members disagree on the cluster UUID ({', '.join(sorted(uuids))});"
            " refusing to pick one automatically"
        )
    best = max(positions, key=lambda p: (p.seqno, p.safe_to_bootstrap, -positions.index(p)))
    if best.seqno < 0:
        raise PlacementError("no member could recover a committed position (all seqno -1)")
    return best


def move_guard(registry: Registry, cluster: str, best: Position, positions: list[Position]) -> int:
    """Swap the guard to name `best` with a generation newer than any a member has acted on."""
    key = guard_key(registry.prefix, cluster)
    current = registry.get(key)
    generation = 0
    if current:
        try:
            generation = int(json.loads(current).get("generation", 0))
        except (ValueError, AttributeError):
            generation = 0
    generation = max([generation, *(p.generation for p in positions)]) + 1
    value = json.dumps(
        {"node": best.node, "generation": generation, "uuid": best.uuid, "seqno": best.seqno},
        separators=(",", ":"),
    )
    if not registry.compare_and_swap(key, value, current):
        raise PlacementError(
            f"the bootstrap guard {key} changed while recovering; another "
            "cidemo run is acting on this cluster"
        )
    return generation
