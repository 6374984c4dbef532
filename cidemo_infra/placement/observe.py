"""Observed state: the site's containers and networks on every engine, found by label."""

from __future__ import annotations

from collections.abc import Mapping

import docker

from cidemo_infra.engines import unique_clients
from cidemo_infra.placement.plan import ObservedContainer, ObservedNetwork
from cidemo_infra.placement.specs import LABEL_NODE, LABEL_ROLE, LABEL_SITE, LABEL_SPEC


def observe(
    site: str, clients: Mapping[str, docker.DockerClient], node_engines: Mapping[str, str]
) -> tuple[list[ObservedContainer], list[ObservedNetwork]]:
    """Each daemon is read once, even when several engine names reach it (clients are cached
    per URL), in one listing; only a container that is not running is inspected (for its exit
    code). A container belongs to the engine of the node its label names."""
    containers: list[ObservedContainer] = []
    networks: list[ObservedNetwork] = []
    for engine, client in unique_clients(clients).items():
        for c in client.api.containers(all=True, filters={"label": f"{LABEL_SITE}={site}"}):
            labels = c.get("Labels") or {}
            name = c["Names"][0].lstrip("/")
            status = str(c.get("State", ""))
            exit_code = 0
            if status in ("exited", "dead"):
                exit_code = int(client.api.inspect_container(c["Id"])["State"].get("ExitCode", 0))
            node = labels.get(LABEL_NODE, "?")
            containers.append(
                ObservedContainer(
                    name=name,
                    engine=node_engines.get(node, engine),
                    node=node,
                    role=labels.get(LABEL_ROLE, "?"),
                    spec_hash=labels.get(LABEL_SPEC, ""),
                    status=status,
                    exit_code=exit_code,
                )
            )
        for n in client.api.networks(filters={"label": f"{LABEL_SITE}={site}"}):
            networks.append(ObservedNetwork(n["Name"], engine))
    return sorted(containers, key=lambda c: c.name), sorted(networks, key=lambda n: n.name)
