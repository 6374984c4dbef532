"""A registration pointing outside the site is ignored (and logged) by the MySQL proxy, the app
router and the MaxScale config: someone who can write a key cannot send the tool's root
connections, or an environment's traffic, to a server of their choice."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest

from cidemo_infra.proxy.maxscale import render_maxscale
from cidemo_infra.registry.keys import Registration
from tests.conftest import REPO

pytestmark = pytest.mark.unit

IMAGES = REPO / "cidemo_infra" / "data" / "images"


def run(script: str, stdin: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(IMAGES / script)],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
        timeout=30,
    )


def servers(cfg: str) -> list[str]:
    return [ln.split()[2] for ln in cfg.splitlines() if ln.strip().startswith("server ")]


def test_the_proxy_takes_members_inside_the_site_network_only() -> None:
    # the attacker's address sorts first: before, it became the read-write server
    stdin = "1.2.3.4:3306\n10.213.7.11:3306\n10.213.7.12:3306\n10.213.8.1:3306\n"
    result = run("dbproxy/render-haproxy-cfg", stdin, BACKEND_CIDRS="10.213.7.0/24,192.168.5.0/28")
    assert set(servers(result.stdout)) == {"10.213.7.11:3306", "10.213.7.12:3306"}
    rw = result.stdout.split("listen mysql_rw")[1].split("listen mysql_ro")[0]
    assert "server 10_213_7_11_3306 10.213.7.11:3306 on-marked-up" in rw
    assert "1.2.3.4:3306: not inside the site's network" in result.stderr
    assert "10.213.8.1:3306: not inside the site's network" in result.stderr


def test_the_router_routes_an_env_only_to_its_own_service() -> None:
    stdin = (
        "pr-1 cidemo-s1-app-pr-1:8080\n"
        "pr-2 10.213.7.11:3306\n"
        "pr-3 cidemo-s1-galera-deis-1:3306\n"
        "pr-4 cidemo-s1-app-pr-1:8080\n"
    )
    result = run(
        "router/render-router-cfg",
        stdin,
        APPS_DOMAIN="cidemo.test",
        APPS_SERVICE_PREFIX="cidemo-s1-app-",
    )
    templates = [ln.split()[3] for ln in result.stdout.splitlines() if "server-template" in ln]
    assert templates == ["cidemo-s1-app-pr-1:8080"]
    for env in ("pr-2", "pr-3", "pr-4"):
        assert f"ignoring route '{env} " in result.stderr


def test_maxscale_leaves_out_a_member_outside_the_site(caplog: pytest.LogCaptureFixture) -> None:
    regs = [
        Registration("database_port", f"h:c{i}:3306", value, 10)
        for i, value in enumerate(("10.0.0.9:3306", "203.0.113.5:3306"))
    ]
    with caplog.at_level(logging.WARNING):
        cfg = render_maxscale(regs, "pw", networks=["10.0.0.0/24"])
    assert "10.0.0.9" in cfg
    assert "203.0.113.5" not in cfg
    assert "203.0.113.5:3306: not inside the site's network" in caplog.text


def test_a_cloud_sites_backend_networks_are_its_network_and_its_nodes() -> None:
    """The proxy of a cloud site takes members of the private network, and of the nodes' own
    addresses where the cloud reported one outside it; nothing else."""
    from cidemo_infra.inventory import Inventory, InventoryNode
    from cidemo_infra.placement.specs import site_cidrs
    from cidemo_infra.site import load_site
    from tests.conftest import SITES

    site = load_site(SITES / "openstack.example.yaml")

    def inventory(*ips: str) -> Inventory:
        nodes = tuple(
            InventoryNode(f"n{i}", "deis", ip, None, "tcp://x:2376") for i, ip in enumerate(ips)
        )
        return Inventory(site.name, "openstack", nodes, "https://x:2379")

    network = str(site.network.cidr)
    assert site_cidrs(site) == network
    assert site_cidrs(site, inventory("10.42.0.11", "10.42.0.12")) == network
    assert site_cidrs(site, inventory("10.42.0.11", "127.0.0.12", "127.0.0.12")) == (
        f"{network},127.0.0.12/32"
    )
