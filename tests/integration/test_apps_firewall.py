"""The apps' firewall on real iptables rules (placement/firewall.py): a container of an apps
(overlay) network reaches neither a control port of this host (INPUT: a service on the host
network, as on cloud nodes) nor one of the site's service containers (DOCKER-USER), while the
site's own containers still reach each other; and removing the site's chains leaves the rest.

Everything made here carries `io.cidemo.test=apps-firewall` and goes in finalizers."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator

import docker
import pytest

from cidemo_infra import images
from cidemo_infra.console import Reporter
from cidemo_infra.placement import firewall
from tests.conftest import need
from tests.integration.conftest import free_port, free_subnet

pytestmark = pytest.mark.integration

LABELS = {"io.cidemo.test": "apps-firewall"}
HOST_PORT = 4568  # one of firewall.CONTROL_PORTS: Galera's IST port, as a host-network service
REGISTRY_PORT = free_port()  # as the site registry's on a cloud node: fenced where one is placed


@pytest.fixture(scope="module")
def image(engine: docker.DockerClient) -> str:
    tags = images.ensure_images({"local": engine}, {"local": ("dbproxy",)}, Reporter(quiet=True))
    return tags["dbproxy"]


def connects(engine: docker.DockerClient, image: str, network: str, host: str, port: int) -> bool:
    """Whether a fresh container on `network` opens a TCP connection to host:port (3 s)."""
    out = engine.containers.run(
        image,
        entrypoint=[
            "bash",
            "-c",
            f"if timeout 3 bash -c '</dev/tcp/{host}/{port}'; then echo OPEN; else echo SHUT; fi",
        ],
        network=network,
        labels=LABELS,
        remove=True,
        user="root",
    )
    return b"OPEN" in out


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def eventually_connects(
    engine: docker.DockerClient, image: str, network: str, host: str, port: int
) -> bool:
    """`connects`, allowing a listener that is still starting 20 s."""
    deadline = time.monotonic() + 20
    while not connects(engine, image, network, host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


@pytest.fixture
def world(engine: docker.DockerClient, image: str) -> Iterator[dict[str, str]]:
    need(engine.info().get("Swarm", {}).get("LocalNodeState") == "active", "a swarm (overlay)")
    site = "fw" + secrets.token_hex(3)
    subnet = free_subnet(engine)
    made: list[docker.models.containers.Container | docker.models.networks.Network] = []
    try:
        site_net = engine.networks.create(
            f"{site}-site",
            driver="bridge",
            ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))]),
            labels=LABELS,
        )
        made.append(site_net)
        apps_net = engine.networks.create(
            f"{site}-apps", driver="overlay", attachable=True, labels=LABELS
        )
        made.append(apps_net)
        listen = "socat TCP-LISTEN:{},fork,reuseaddr SYSTEM:'echo hi'"
        member = engine.containers.create(
            image,
            entrypoint=["bash", "-c", listen.format(3306)],
            labels=LABELS,
            user="root",
            network=site_net.name,
        )
        made.insert(0, member)
        member.start()
        member.reload()
        member_ip = member.attrs["NetworkSettings"]["Networks"][site_net.name]["IPAddress"]
        hosted = engine.containers.run(
            image,
            entrypoint=[
                "bash",
                "-c",
                f"{listen.format(REGISTRY_PORT)} & {listen.format(HOST_PORT)}",
            ],
            network_mode="host",
            labels=LABELS,
            user="root",
            detach=True,
        )
        made.insert(0, hosted)
        deadline = time.monotonic() + 30
        while not (_listens(HOST_PORT) and _listens(REGISTRY_PORT)):
            assert time.monotonic() < deadline, "the host-network listener did not start"
            time.sleep(0.5)
        gateway = engine.networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
        yield {
            "site": site,
            "subnet": str(subnet),
            "site_net": site_net.name,
            "apps_net": apps_net.name,
            "member": member_ip,
            "host": gateway,
        }
    finally:
        firewall.remove(site)
        for thing in made:
            with contextlib.suppress(docker.errors.APIError):
                if isinstance(thing, docker.models.containers.Container):
                    thing.remove(force=True)
                elif isinstance(thing, docker.models.networks.Network):
                    thing.remove()


def test_the_apps_network_cannot_reach_control_ports_and_the_site_still_can(
    engine: docker.DockerClient, image: str, world: dict[str, str]
) -> None:
    apps, site_net = world["apps_net"], world["site_net"]
    # today's engine: an app reaches a control port of its host (a host-network service)
    assert connects(engine, image, apps, world["host"], HOST_PORT)

    firewall.install(world["site"], [world["subnet"]])
    firewall.install(world["site"], [world["subnet"]])  # idempotent: one jump each
    chains = firewall.chains(world["site"])
    user = subprocess.run(["iptables", "-S", "DOCKER-USER"], capture_output=True, text=True)
    assert user.stdout.count(f"-j {chains.forward}") == 1
    assert not connects(engine, image, apps, world["host"], HOST_PORT)  # INPUT
    assert not connects(engine, image, apps, world["member"], 3306)  # DOCKER-USER
    assert eventually_connects(engine, image, site_net, world["member"], 3306)  # the platform
    # a site with a registry fences its port too
    assert connects(engine, image, apps, world["host"], REGISTRY_PORT)
    firewall.install(world["site"], [world["subnet"]], [REGISTRY_PORT])
    assert not connects(engine, image, apps, world["host"], REGISTRY_PORT)
    assert not connects(engine, image, apps, world["host"], HOST_PORT)

    firewall.remove(world["site"])
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    assert chains.forward not in rules and chains.input not in rules
    assert connects(engine, image, apps, world["host"], HOST_PORT)
