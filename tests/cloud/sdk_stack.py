"""The Terraform module's resource set for a site, created with openstacksdk as the member user.

Names, tags, rules and the output mirror terraform/*.tf, so the cloud tests exercise what
`terraform apply` would ask of the cloud (the provider cannot be downloaded here). The rule tables
are read from terraform/security.tf itself.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openstack.connection import Connection

from cidemo_infra.cloud import wait_for_servers
from cidemo_infra.site import Node, Site
from tests.support.tfschema import load_hcl

MODULE = Path(__file__).resolve().parents[2] / "terraform"
USER_DATA = "#cloud-config\n# rendered by cidemo; the fake compute driver never runs it\n"


def module_locals() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in load_hcl(MODULE / "security.tf")["locals"]:
        merged.update({k: v for k, v in block.items() if not k.startswith("__")})
    return merged


def tags(site: Site) -> list[str]:
    return ["cidemo", f"cidemo-site-{site.name}"]


@dataclass
class Stack:
    """What was created, for the assertions; the sweep removes it all by prefix and tag."""

    site: Site
    external: Any = None
    network: Any = None
    subnet: Any = None
    router: Any = None
    groups: dict[str, Any] = field(default_factory=dict)
    keypair: Any = None
    server_group: Any = None
    ports: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)
    floating_ips: dict[str, Any] = field(default_factory=dict)


def create_network(conn: Connection, stack: Stack) -> None:
    """network.tf: network, subnet, router with the external gateway, router interface."""
    site = stack.site
    stack.external = external_network(conn, site)
    stack.network = conn.network.create_network(name=f"{site.name}-net", is_admin_state_up=True)
    conn.network.set_tags(stack.network, tags(site))
    stack.subnet = conn.network.create_subnet(
        name=f"{site.name}-subnet",
        network_id=stack.network.id,
        cidr=str(site.network.cidr),
        ip_version=4,
        dns_nameservers=[str(ip) for ip in site.network.dns],
    )
    conn.network.set_tags(stack.subnet, tags(site))
    stack.router = conn.network.create_router(
        name=f"{site.name}-router", external_gateway_info={"network_id": stack.external.id}
    )
    conn.network.set_tags(stack.router, tags(site))
    conn.network.add_interface_to_router(stack.router, subnet=stack.subnet.id)


def external_network(conn: Connection, site: Site) -> Any:
    """network.tf: data "openstack_networking_network_v2" "external" (by name, external)."""
    found = [
        n for n in conn.network.networks(name=site.network.external_network) if n.is_router_external
    ]
    assert len(found) == 1, f"external network {site.network.external_network}: {found}"
    return found[0]


def create_security_groups(conn: Connection, stack: Stack) -> None:
    """security.tf: the public and cluster groups and every rule, as the module declares them."""
    site, name = stack.site, stack.site.name
    local = module_locals()
    public = conn.network.create_security_group(
        name=f"{name}-public",
        description=f"cidemo {name}: HTTP(S) and git push from the world, SSH from the admins",
    )
    cluster = conn.network.create_security_group(
        name=f"{name}-cluster",
        description=(
            f"cidemo {name}: etcd, Galera, flannel, Swarm between the nodes; "
            "Docker TLS also from the admins"
        ),
    )
    for group in (public, cluster):
        conn.network.set_tags(group, tags(site))
    stack.groups = {"public": public, "cluster": cluster}

    def rule(group: Any, description: str, protocol: str, port: int, **source: str) -> None:
        conn.network.create_security_group_rule(
            security_group_id=group.id,
            description=description,
            direction="ingress",
            ethertype="IPv6" if ":" in source.get("remote_ip_prefix", "") else "IPv4",
            protocol=protocol,
            port_range_min=port,
            port_range_max=port,
            **source,
        )

    for key, port in local["public_world_tcp_ports"].items():
        rule(public, f"{name} {key} from the world", "tcp", port, remote_ip_prefix="0.0.0.0/0")
    admins = sorted({str(cidr) for cidr in site.admin_cidrs})
    for source in admins or ["0.0.0.0/0"]:
        rule(public, f"{name} ssh from {source}", "tcp", 22, remote_ip_prefix=source)
    for key, spec in local["cluster_ports"].items():
        rule(
            cluster,
            f"{name} {key} between the nodes",
            spec["protocol"],
            spec["port"],
            remote_group_id=cluster.id,
        )
    for source in admins:
        rule(cluster, f"{name} docker_tls from {source}", "tcp", 2376, remote_ip_prefix=source)


def create_keypair(conn: Connection, stack: Stack, public_key: str) -> None:
    stack.keypair = conn.compute.create_keypair(name=stack.site.ssh.key_name, public_key=public_key)


def create_server_group(conn: Connection, stack: Stack) -> None:
    stack.server_group = conn.compute.create_server_group(
        name=f"{stack.site.name}-deis", policy="anti-affinity"
    )


def create_port(conn: Connection, stack: Stack, node: Node) -> Any:
    """compute.tf: openstack_networking_port_v2.node, with the node's fixed IP."""
    site = stack.site
    port = conn.network.create_port(
        name=f"{site.name}-{node.name}",
        network_id=stack.network.id,
        is_admin_state_up=True,
        security_group_ids=[stack.groups["public"].id, stack.groups["cluster"].id],
        fixed_ips=[{"subnet_id": stack.subnet.id, "ip_address": str(site.private_ip(node))}],
    )
    conn.network.set_tags(port, tags(site))
    stack.ports[node.name] = port
    return port


def boot_server(conn: Connection, stack: Stack, node: Node) -> Any:
    """compute.tf: openstack_compute_instance_v2.node on the node's port (does not wait)."""
    site = stack.site
    role = site.roles[node.role]
    image = conn.image.find_image(role.image, ignore_missing=False)
    flavor = conn.compute.find_flavor(role.flavor, ignore_missing=False)
    hints = {"group": stack.server_group.id} if node.role == "deis" else {}
    server = conn.compute.create_server(
        name=f"{site.name}-{node.name}",
        image_id=image.id,
        flavor_id=flavor.id,
        key_name=stack.keypair.name,
        user_data=base64.b64encode(USER_DATA.encode()).decode(),
        tags=tags(site),
        metadata={"cidemo_site": site.name, "cidemo_role": node.role},
        networks=[{"port": stack.ports[node.name].id}],
        scheduler_hints=hints,
    )
    stack.servers[node.name] = server
    return server


def create_floating_ip(conn: Connection, stack: Stack, node: Node) -> Any:
    """compute.tf: the floating IP (description = "<site>-<node>") and its association."""
    site = stack.site
    fip = conn.network.create_ip(
        floating_network_id=stack.external.id, description=f"{site.name}-{node.name}"
    )
    conn.network.set_tags(fip, tags(site))
    fip = conn.network.update_ip(fip, port_id=stack.ports[node.name].id)
    stack.floating_ips[node.name] = fip
    return fip


def create_stack(
    conn: Connection, site: Site, public_key: str, timeout: float = 120
) -> tuple[Stack, dict[str, dict[str, str]]]:
    """Everything the module creates for `site`, and its `terraform output -json` `nodes` value."""
    assert site.network.existing_network is None, "the SDK stack creates its own network"
    stack = Stack(site)
    create_network(conn, stack)
    create_security_groups(conn, stack)
    create_keypair(conn, stack, public_key)
    create_server_group(conn, stack)
    for node in site.nodes:
        create_port(conn, stack, node)
    # Parallel boots into one anti-affinity group race in the scheduler and rely on nova's late
    # check and reschedule, which fails when no alternate host is left: boot them one by one.
    for node in site.nodes_of("deis"):
        boot_server(conn, stack, node)
        wait_for_servers(conn, [f"{site.name}-{node.name}"], timeout)
    for node in site.nodes:
        if node.role != "deis":
            boot_server(conn, stack, node)
    names = [f"{site.name}-{node.name}" for node in site.nodes]
    active = wait_for_servers(conn, names, timeout)
    stack.servers = {node.name: active[f"{site.name}-{node.name}"] for node in site.nodes}
    for node in site.nodes:
        create_floating_ip(conn, stack, node)
    return stack, nodes_output(conn, stack)


def nodes_output(conn: Connection, stack: Stack) -> dict[str, dict[str, str]]:
    """outputs.tf `nodes`, read back from the cloud as Terraform reads its attributes."""
    site = stack.site
    out = {}
    for node in site.nodes:
        port = conn.network.get_port(stack.ports[node.name].id)
        server = conn.compute.get_server(stack.servers[node.name].id)
        fip = conn.network.get_ip(stack.floating_ips[node.name].id)
        out[node.name] = {
            "name": node.name,
            "server_name": server.name,
            "role": node.role,
            "private_ip": port.fixed_ips[0]["ip_address"],
            "public_ip": fip.floating_ip_address,
        }
    return out
