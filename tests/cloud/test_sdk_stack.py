"""The module's whole resource set, created with openstacksdk as the member user, then swept."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from openstack.connection import Connection

from cidemo_infra.cloud import find, preflight, security_group_rule_count, sweep
from cidemo_infra.site import Site
from tests.cloud.sdk_stack import create_stack, module_locals

pytestmark = pytest.mark.cloud

OUTPUT_KEYS = {"name", "server_name", "role", "private_ip", "public_ip"}


def test_the_module_resource_set_comes_up_and_the_sweep_removes_all_of_it(
    conn: Connection, make_site: Callable[..., Site], public_key: str
) -> None:
    site = make_site()
    assert preflight(site, conn, public_key) == []

    stack, nodes = create_stack(conn, site, public_key)

    assert set(nodes) == {n.name for n in site.nodes}
    external = next(conn.network.subnets(network_id=stack.external.id)).cidr
    for node in site.nodes:
        out = nodes[node.name]
        assert set(out) == OUTPUT_KEYS
        assert out["name"] == node.name
        assert out["server_name"] == f"{site.name}-{node.name}"
        assert out["role"] == node.role
        assert out["private_ip"] == str(site.private_ip(node))
        assert ipaddress.ip_address(out["public_ip"]) in ipaddress.ip_network(external)

    tag = f"cidemo-site-{site.name}"
    for node in site.nodes:
        server = conn.compute.get_server(stack.servers[node.name].id)
        assert server.status == "ACTIVE"
        assert tag in server.tags
        assert server.metadata == {"cidemo_site": site.name, "cidemo_role": node.role}
        fip = conn.network.get_ip(stack.floating_ips[node.name].id)
        # no L3 agent in the test cloud: the address is associated but stays DOWN
        assert fip.port_id == stack.ports[node.name].id
        assert fip.status in ("ACTIVE", "DOWN")
    group = conn.compute.get_server_group(stack.server_group.id)
    assert group.policy == "anti-affinity"
    deis = {stack.servers[n.name].id for n in site.nodes_of("deis")}
    assert set(group.member_ids) == deis

    cluster, public = stack.groups["cluster"], stack.groups["public"]
    ingress = [
        r
        for g in (cluster, public)
        for r in conn.network.security_group_rules(security_group_id=g.id)
        if r.direction == "ingress"
    ]
    assert len(ingress) == security_group_rule_count(site)
    from_group = {
        (r.protocol, r.port_range_min)
        for r in ingress
        if r.security_group_id == cluster.id and r.remote_group_id == cluster.id
    }
    expected = {(p["protocol"], p["port"]) for p in module_locals()["cluster_ports"].values()}
    assert from_group == expected
    world = [r for r in ingress if r.remote_ip_prefix == "0.0.0.0/0"]
    assert sorted(r.port_range_min for r in world) == [80, 443, 2222]
    assert all(r.security_group_id == public.id for r in world)

    # a re-run against the applied site needs no new quota and finds the same keypair, which
    # the site's Terraform state holds after a real apply
    assert preflight(site, conn, public_key, managed_keypairs={site.ssh.key_name}) == []

    found = sweep(conn, site.name, delete=False, key_name=site.ssh.key_name)
    kinds = sorted(leak.kind for leak in found)
    n = len(site.nodes)
    assert kinds == sorted(
        ["server"] * n
        + ["floating_ip"] * n
        + ["port"] * n
        + ["router", "subnet", "network", "server_group", "keypair"]
        + ["security_group"] * 2
    )

    removed = sweep(conn, site.name, delete=True, key_name=site.ssh.key_name)

    assert removed == found
    assert find(conn, site.name, key_name=site.ssh.key_name) == []
