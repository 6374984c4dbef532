"""The inventory: the site's nodes as a target produced them, with addresses and endpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cidemo_infra.state import write_private


@dataclass(frozen=True)
class InventoryNode:
    name: str
    role: str
    private_ip: str
    public_ip: str | None
    docker_url: str
    tls_dir: str | None = None  # directory with ca.pem, cert.pem, key.pem for tcp:// + TLS
    engine: str = ""  # local target: the engines key; openstack: the node name


@dataclass(frozen=True)
class Inventory:
    site: str
    target: str
    nodes: tuple[InventoryNode, ...]
    etcd_url: str  # where the tool reaches etcd
    network: str | None = None  # local target: the Docker network the tool created

    def node(self, name: str) -> InventoryNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def of_role(self, role: str) -> list[InventoryNode]:
        return [n for n in self.nodes if n.role == role]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Inventory:
        nodes = tuple(InventoryNode(**n) for n in data["nodes"])
        return cls(**{**data, "nodes": nodes})

    def save(self, path: Path) -> None:
        write_private(path, self.to_json() + "\n", 0o600)

    @classmethod
    def load(cls, path: Path) -> Inventory | None:
        if not path.exists():
            return None
        return cls.from_dict(json.loads(path.read_text()))
