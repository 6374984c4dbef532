"""Observed state: the site's containers and networks on every engine, found by label."""

from __future__ import annotations

import docker

from cidemo_infra.placement.plan import ObservedContainer, ObservedNetwork
from cidemo_infra.placement.specs import LABEL_NODE, LABEL_ROLE, LABEL_SITE, LABEL_SPEC


def observe(
    site: str, clients: dict[str, docker.DockerClient]
) -> tuple[list[ObservedContainer], list[ObservedNetwork]]:
    containers: list[ObservedContainer] = []
    networks: list[ObservedNetwork] = []
    for engine, client in clients.items():
        for c in client.api.containers(all=True, filters={"label": f"{LABEL_SITE}={site}"}):
            labels = c.get("Labels") or {}
            name = c["Names"][0].lstrip("/")
            detail = client.api.inspect_container(c["Id"])["State"]
            containers.append(
                ObservedContainer(
                    name=name,
                    engine=engine,
                    node=labels.get(LABEL_NODE, "?"),
                    role=labels.get(LABEL_ROLE, "?"),
                    spec_hash=labels.get(LABEL_SPEC, ""),
                    status=detail.get("Status", c.get("State", "")),
                    exit_code=int(detail.get("ExitCode", 0)),
                )
            )
        for n in client.api.networks(filters={"label": f"{LABEL_SITE}={site}"}):
            networks.append(ObservedNetwork(n["Name"], engine))
    return sorted(containers, key=lambda c: c.name), sorted(networks, key=lambda n: n.name)
