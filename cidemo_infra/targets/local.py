"""The local target: logical nodes mapped to Docker engines on this machine; no cloud."""

from __future__ import annotations

from cidemo_infra.inventory import Inventory, InventoryNode
from cidemo_infra.placement.specs import network_name
from cidemo_infra.site import Site


def local_inventory(site: Site) -> Inventory:
    ips = site.private_ips()
    nodes = []
    for node in site.nodes:
        engine_key = site.engine_of(node)
        engine = site.engines[engine_key]
        nodes.append(
            InventoryNode(
                name=node.name,
                role=node.role,
                private_ip=str(ips[node.name]),
                public_ip=None,
                docker_url=engine.url,
                tls_dir=engine.tls_dir,
                engine=engine_key,
            )
        )
    return Inventory(
        site=site.name,
        target="local",
        nodes=tuple(nodes),
        etcd_url=f"https://127.0.0.1:{site.services.etcd.port}",
        network=network_name(site),
    )
