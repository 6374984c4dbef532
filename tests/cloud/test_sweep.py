"""The sweep after a half-applied site: exactly the site's resources, never another site's.

The half-applied site is the project's module applied by the real provider to part of its
resources (`-target`), as an apply stopped halfway leaves it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from openstack.connection import Connection

from cidemo_infra.cloud import find, site_tag, sweep
from cidemo_infra.console import Reporter
from cidemo_infra.render.site_files import render_site
from cidemo_infra.render.tfvars import TFVARS_NAME
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir
from cidemo_infra.targets.openstack import site_driver

pytestmark = pytest.mark.cloud


def test_a_half_applied_site_is_swept_exactly_and_strays_survive(
    conn: Connection,
    make_site: Callable[..., Site],
    new_site_name: Callable[[], str],
    public_key: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    external_subnet_stays_here: str,
) -> None:
    site = make_site(roles={"deis": {"anti_affinity": "soft"}})  # parallel boots, 3 hosts
    first, second = site.nodes[0], site.nodes[1]
    state = StateDir.resolve(site.name, str(tmp_path / "state"))
    render_site(site, state, str(tmp_path / "site.yaml"))
    driver = site_driver(site, state, Reporter(quiet=True))
    driver.init()
    driver.plan(state.terraform_dir / TFVARS_NAME)
    driver.apply_plan()
    # then back to half, as an apply stopped after the first server and two ports leaves it
    # (a targeted plan cannot make this: the module's outputs index every node)
    gone = [n for n in site.nodes if n.name != first.name]
    for node in gone:
        server = conn.compute.find_server(f"{site.name}-{node.name}", ignore_missing=False)
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=120)
        fip = next(conn.network.ips(description=f"{site.name}-{node.name}"))
        conn.network.delete_ip(fip)
        if node.name != second.name:
            conn.network.delete_port(conn.network.find_port(f"{site.name}-{node.name}"))

    other = make_site(name=new_site_name())
    stray_net = conn.network.create_network(name=f"{other.name}-net")
    conn.network.set_tags(stray_net, [site_tag(other.name)])
    stray_key = conn.compute.create_keypair(name=f"{other.name}-key", public_key=public_key)
    # the name says this site, the tag says the other one: the tag wins
    tagged = conn.network.create_network(name=f"{site.name}-borrowed")
    conn.network.set_tags(tagged, [site_tag(other.name)])
    # a prefix of the site name, without the dash, is another site
    lookalike = conn.network.create_security_group(name=f"{site.name}x-public")
    request.addfinalizer(lambda: conn.network.delete_security_group(lookalike))
    # site `<name>-2`: its untagged server group and keypair start with `<name>-`, and stay
    longer = f"{site.name}-2"
    longer_group = conn.compute.create_server_group(
        name=f"{longer}-deis", policies=["anti-affinity"]
    )
    request.addfinalizer(lambda: conn.compute.delete_server_group(longer_group))
    longer_key = conn.compute.create_keypair(name=f"{longer}-key", public_key=public_key)
    request.addfinalizer(lambda: conn.compute.delete_keypair(longer_key))

    expected = {
        ("server", f"{site.name}-{first.name}"),
        ("floating_ip", f"{site.name}-{first.name}"),
        ("port", f"{site.name}-{first.name}"),
        ("port", f"{site.name}-{second.name}"),
        ("router", f"{site.name}-router"),
        ("subnet", f"{site.name}-subnet"),
        ("network", f"{site.name}-net"),
        ("security_group", f"{site.name}-public"),
        ("security_group", f"{site.name}-cluster"),
        ("server_group", f"{site.name}-deis"),
        ("keypair", site.ssh.key_name),
    }

    found = sweep(conn, site.name, delete=False, key_name=site.ssh.key_name)
    assert {(leak.kind, leak.name) for leak in found} == expected
    (server,) = [leak for leak in found if leak.kind == "server"]
    assert conn.compute.get_server(server.id).status == "ACTIVE"

    removed = sweep(conn, site.name, delete=True, key_name=site.ssh.key_name)

    assert removed == found
    assert find(conn, site.name, key_name=site.ssh.key_name) == []
    assert sweep(conn, site.name, delete=True, key_name=site.ssh.key_name) == []
    assert conn.network.get_network(stray_net.id).name == f"{other.name}-net"
    assert conn.network.get_network(tagged.id).name == f"{site.name}-borrowed"
    assert conn.network.get_security_group(lookalike.id).name == f"{site.name}x-public"
    assert conn.compute.find_keypair(stray_key.name) is not None
    assert conn.compute.get_server_group(longer_group.id).name == f"{longer}-deis"
    assert conn.compute.find_keypair(longer_key.name) is not None
    assert {(leak.kind, leak.name) for leak in find(conn, other.name, key_name=stray_key.name)} == {
        ("network", f"{other.name}-net"),
        ("network", f"{site.name}-borrowed"),
        ("keypair", stray_key.name),
    }
