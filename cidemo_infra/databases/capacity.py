"""Room for previews beside the Galera members on a node.

Previews have hard limits (`environments.preview_limits`: CPUs and memory of the app task and of
the database container, no swap). The members keep their share: each running member gets
`services.galera.cpu_shares` (a weight against the previews' default 1024 under contention) and
a memory reservation of `reserved_memory_mb`, set live through the engine's API (`docker
update`: no restart, and the members' placement spec is unchanged). A new preview is refused
when its limits do not fit in what the node's memory leaves after the members' reservations and
the previews already there, so the previews together can never take a member's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker
import docker.errors

from cidemo_infra.errors import PlacementError
from cidemo_infra.placement.specs import LABEL_ROLE, LABEL_SITE
from cidemo_infra.placement.teardown import LABEL_APPS_OF

MIB = 1 << 20
ROLE_MEMBER = "galera"


@dataclass(frozen=True)
class Room:
    node_mb: int
    members: int
    reserved_mb: int  # per member
    previews: int  # previews' databases on the node now
    preview_mb: int  # one preview's limits: database + app

    @property
    def free_mb(self) -> int:
        return self.node_mb - self.members * self.reserved_mb - self.previews * self.preview_mb

    @property
    def fits(self) -> bool:
        return self.free_mb >= self.preview_mb


def reserve_members(
    client: docker.DockerClient, site: str, cpu_shares: int, memory_mb: int
) -> list[str]:
    """Give the site's members on this engine their CPU weight and memory reservation (only
    where they differ); returns the members updated."""
    flt = {"label": [f"{LABEL_SITE}={site}", f"{LABEL_ROLE}={ROLE_MEMBER}"]}
    updated = []
    for found in client.api.containers(filters=flt):
        info = client.api.inspect_container(found["Id"])
        host = info["HostConfig"]
        if host.get("CpuShares") == cpu_shares and host.get("MemoryReservation") == memory_mb * MIB:
            continue
        try:
            client.api.update_container(
                found["Id"], cpu_shares=cpu_shares, mem_reservation=memory_mb * MIB
            )
        except docker.errors.APIError as exc:
            raise PlacementError(
                f"cannot reserve CPU and memory for {info['Name'].lstrip('/')}: "
                f"{exc.explanation or exc}"
            ) from None
        updated.append(str(info["Name"]).lstrip("/"))
    return updated


def room(client: docker.DockerClient, site: str, reserved_mb: int, preview_mb: int) -> Room:
    node_mb = int(client.info().get("MemTotal", 0)) // MIB
    members = client.api.containers(
        filters={"label": [f"{LABEL_SITE}={site}", f"{LABEL_ROLE}={ROLE_MEMBER}"]}
    )
    previews = client.api.containers(
        all=True, filters={"label": [f"{LABEL_APPS_OF}={site}", f"{LABEL_ROLE}=preview-db"]}
    )
    return Room(node_mb, len(members), reserved_mb, len(previews), preview_mb)


def check_room(room_now: Room, node: str) -> None:
    if room_now.fits:
        return
    raise PlacementError(
        f"node {node}: no room for another preview: {room_now.node_mb} MiB, "
        f"{room_now.members} Galera member(s) reserving {room_now.reserved_mb} MiB each "
        f"(services.galera.reserved_memory_mb), {room_now.previews} preview(s) of "
        f"{room_now.preview_mb} MiB (environments.preview_limits, app + database); remove a "
        "preview (cidemo env down / gc) or lower the limits"
    )
