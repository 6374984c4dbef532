"""The OpenStack path end to end on this machine: the real module applied to the test OpenStack,
its servers booted as lab nodes from the user-data nova holds (tests/cloud/lab), the services
placed over Docker TLS at the floating IPs, checked, converged again, and destroyed to nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pymysql
import pytest
import yaml
from openstack.connection import Connection

from cidemo_infra import image_registry, images
from cidemo_infra.cloud import find, sweep
from cidemo_infra.console import Reporter
from cidemo_infra.databases import snapshots
from cidemo_infra.engines import client_for
from cidemo_infra.inventory import Inventory
from tests.cloud.conftest import missing
from tests.cloud.lab import labd
from tests.conftest import REPO, SITES, run_cidemo
from tests.support.http_page import page

pytestmark = pytest.mark.cloud
# CI runs the lab's representative part (provision across the booted nodes, the metadata guard,
# destroy to nothing); previews on the nodes' Swarm and a lost Deis node take about 4 minutes
# more and run with CIDEMO_LAB_FULL=1 (make test-lab).
lab_full = pytest.mark.skipif(
    os.environ.get("CIDEMO_LAB_FULL") != "1",
    reason="the lab's full set only: make test-lab (CIDEMO_LAB_FULL=1)",
)
READY_TIMEOUT = 1200  # a cold machine builds etcd, the node image and the project's images
NODES = ("deis-1", "deis-2", "deis-3", "standalone-1")
BASE_IMAGE = "cidemo/debian:bookworm-slim"
PROBE = "exec 3<>/dev/tcp/169.254.169.254/80 && echo reached"
SHA = "1ab5c0de" * 5
ETCD_FILES = "/etc/ssl/certs"  # where cloud-config puts etcd's CA, certificate and key
ETCD_TLS = (
    "--endpoints=https://127.0.0.1:2379",
    f"--cacert={ETCD_FILES}/cidemo-etcd-ca.pem",
    f"--cert={ETCD_FILES}/cidemo-etcd-server.pem",
    f"--key={ETCD_FILES}/cidemo-etcd-server-key.pem",
)
# the apps' firewall: a port of the node itself (INPUT) and of another node (DOCKER-USER)
FENCED = "exec 3<>/dev/tcp/{host}/{port} && echo reached"


@dataclass
class LabSite:
    name: str
    path: Path
    state_dir: Path
    base: Path
    engine: docker.DockerClient

    def cidemo(self, *command: str, timeout: float = 1500) -> Any:
        return run_cidemo(
            *command,
            "--site",
            str(self.path),
            "--state-dir",
            str(self.state_dir),
            timeout=timeout,
        )

    @property
    def token(self) -> str:
        return (self.base / "token").read_text().strip()

    def node(self, node: str) -> Any:
        return self.engine.containers.get(f"cidemo-lab-{self.name}-{node}")

    def inventory(self) -> Inventory:
        found = Inventory.load(self.state_dir / "inventory.json")
        assert found is not None, "no inventory: was the site provisioned?"
        return found

    def engines(self, skip: str | None = None) -> dict[str, docker.DockerClient]:
        return {
            n.name: client_for(n.docker_url, n.tls_dir, False, node=n.name)
            for n in self.inventory().nodes
            if n.name != skip
        }

    def page(self, env: str) -> tuple[int, Any]:
        """GET / of an environment through the router on the standalone node's floating IP."""
        address = self.inventory().node("standalone-1").public_ip
        return page(str(address), 80, f"{env}.apps.lab.cidemo.test")

    def task_nodes(self, skip: str | None = None) -> dict[str, str]:
        """Environment -> the node name that runs its running task, asked of a manager."""
        engines = self.engines() if skip is None else self.engines(skip=skip)
        manager = engines["deis-1" if skip != "deis-1" else "deis-2"]  # the deis nodes manage
        hostnames = {
            n.id: n.attrs["Description"]["Hostname"].removeprefix(f"{self.name}-")
            for n in manager.nodes.list()
        }
        out = {}
        for service in manager.services.list():
            env = service.attrs["Spec"].get("Labels", {}).get("io.cidemo.env")
            for task in service.tasks({"desired-state": "running"}):
                if env and task["Status"]["State"] == "running":
                    out[env] = hostnames.get(task["NodeID"], "?")
        return out

    def write_survives(self) -> bool:
        try:
            with self.database() as cur:
                cur.execute("CREATE DATABASE IF NOT EXISTS lab_lost")
                cur.execute("CREATE TABLE IF NOT EXISTS lab_lost.lost (id INT PRIMARY KEY)")
                cur.execute("REPLACE INTO lab_lost.lost VALUES (1)")
            return True
        except pymysql.MySQLError:
            return False

    @contextlib.contextmanager
    def database(self) -> Iterator[Any]:
        """Root through the proxy's read-write port on the standalone node (this machine is on
        the lab network, as a host inside the cloud would be)."""
        secret = (self.state_dir / "secrets" / "root_password").read_text().strip()
        standalone = self.inventory().node("standalone-1").private_ip
        conn = pymysql.connect(
            host=str(standalone),
            port=4006,
            user="root",
            password=secret,
            autocommit=True,
            connect_timeout=10,
            read_timeout=20,
            write_timeout=20,
        )
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()


def _engine() -> docker.DockerClient:
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except docker.errors.DockerException as exc:
        missing(f"this machine's Docker engine ({exc})")
    return client


@pytest.fixture(scope="module")
def lab_site(
    conn: Connection, external_subnet_stays_here: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabSite]:
    engine = _engine()
    if labd.leftovers(engine):
        missing(
            f"a lab is already running here ({labd.leftovers(engine)[:3]}); make cloud-lab-down"
        )
    work = tmp_path_factory.mktemp("lab")
    name = f"ct{secrets.token_hex(3)}"
    data = yaml.safe_load((SITES / "cloud-lab.yaml").read_text())
    data.update(name=name, cloud=os.environ.get("OS_CLOUD", "cidemo-test"))
    data["ssh"] = {"key_name": f"{name}-key", "public_key_file": str(SITES / "example-key.pub")}
    data["services"]["galera"]["cluster_name"] = name
    if os.environ.get("CIDEMO_LAB_FULL") == "1":  # the site registry on standalone-1: snapshots
        data["environments"]["build"] = {"test_command": ["true"]}  # go through it to the nodes
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    base = work / "labd"
    base.mkdir()
    log = (work / "labd.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cloud.lab.labd", "run", "--tag", f"cidemo-site-{name}",
         "--base", str(base), "--site", str(path), "--cloud", data["cloud"]],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    site = LabSite(name, path, work / "state", base, engine)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not (base / "ready").exists():
            assert proc.poll() is None, (work / "labd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "labd was not ready in time"
            time.sleep(2)
        yield site
    finally:
        if (site.state_dir / "inventory.json").exists():
            site.cidemo("destroy", "--yes")
        sweep(conn, name, delete=True, key_name=f"{name}-key")
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        labd.down(engine)
        print((work / "labd.log").read_text()[-4000:])


def wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(2)


def run_in(container: Any, *argv: str) -> tuple[int, str]:
    result = container.exec_run(list(argv), demux=False)
    return result.exit_code, result.output.decode(errors="replace")


def test_provision_on_lab_nodes_converges_and_checks(conn: Connection, lab_site: LabSite) -> None:
    site = lab_site
    provisioned = site.cidemo("provision", "--yes")
    assert provisioned.rc == 0, provisioned.out[-3000:] + provisioned.err[-3000:]

    for name in NODES:
        code, result = run_in(site.node(name), "cat", "/run/cidemo-lab/result")
        assert (code, result.strip()) == (0, "ok"), f"{name}: {result}"
    # etcd answers only clients with a certificate of the site CA, on 127.0.0.1 too
    code, members = run_in(site.node("deis-1"), "etcdctl", *ETCD_TLS, "member", "list")
    assert code == 0 and members.count("started") == 3, members
    code, refused = run_in(
        site.node("deis-1"), "etcdctl", "--endpoints=https://127.0.0.1:2379",
        f"--cacert={ETCD_FILES}/cidemo-etcd-ca.pem", "--dial-timeout=5s", "member", "list",
    )  # fmt: skip
    assert code != 0 and "started" not in refused, refused

    smoke = site.cidemo("smoke")
    assert smoke.rc == 0, smoke.out + smoke.err

    again = site.cidemo("provision", "--yes")
    assert again.rc == 0, again.err[-2000:]
    assert "infrastructure: no changes" in again.out
    assert "no changes: the site is converged (0 actions)" in again.out


def test_the_metadata_guard_holds_on_a_node(lab_site: LabSite) -> None:
    """The node reaches the (lab's) metadata service; a container on its bridge does not."""
    node = lab_site.node("deis-1")
    code, token = run_in(node, "curl", "-sf", "-m", "5", "http://169.254.169.254/cidemo-lab/token")
    assert (code, token.strip()) == (0, lab_site.token)
    code, out = run_in(
        node, "docker", "run", "--rm", BASE_IMAGE, "timeout", "10", "bash", "-c", PROBE
    )
    assert code != 0 and "reached" not in out, out


@lab_full
def test_previews_run_on_a_swarm_of_the_three_deis_nodes(lab_site: LabSite) -> None:
    site = lab_site
    engines = site.engines()
    image = f"cidemo/guestbook:{SHA}"
    images.build_app_image(
        site.engine, REPO / "examples" / "guestbook", image, Reporter(quiet=True),
        build_args={"APP_VERSION": SHA},
    )  # fmt: skip
    for name in ("deis-1", "deis-2", "deis-3"):  # no registry yet: the engines' API
        engines[name].images.load(site.engine.images.get(image).save(named=True))

    staging = site.cidemo("env", "up", "--staging", "--ref", SHA, "--image", image)
    assert staging.rc == 0, staging.out + staging.err
    # staging's snapshot went to the other Deis nodes through the site registry on standalone-1
    registry = f"{site.inventory().node('standalone-1').private_ip}:5000"
    assert f"through {registry}" in staging.err, staging.err[-3000:]
    repo = snapshots.repository(site.name, "stage-guestbook")
    held = image_registry.tags(engines["standalone-1"], f"cidemo-{site.name}-registry", repo)
    assert [t.split("-")[0] for t in held] == ["full", "schema"], held  # one of each kind
    preview = site.cidemo("env", "up", "--pr", "7", "--ref", SHA, "--image", image)
    assert preview.rc == 0, preview.out + preview.err

    # the router follows etcd: a route is live a moment after env up wrote it
    # the preview's database is a branch of staging's snapshot: staging's name, its own server
    for env, database in (
        ("pr-7-guestbook", "stage_guestbook"),
        ("stage-guestbook", "stage_guestbook"),
    ):
        wait_until(f"{env} answers", lambda env=env: site.page(env)[0] == 200, 60)
        status, page = site.page(env)
        assert (status, page["database"], page["version"]) == (200, database, SHA), page
    # two services, tasks on more than one host, reached by the router over the overlay
    hosts = site.task_nodes()
    assert len(set(hosts.values())) > 1, hosts

    # the metadata guard also holds for a container on the apps' overlay network
    manager = engines["deis-1"]
    overlay = next(n.name for n in manager.networks.list() if n.name.endswith("-apps"))
    code, out = run_in(
        site.node("deis-1"), "docker", "run", "--rm", "--network", overlay, BASE_IMAGE,
        "timeout", "10", "bash", "-c", PROBE,
    )  # fmt: skip
    assert code != 0 and "reached" not in out, out

    # the apps' firewall: from the overlay, neither this node's etcd and Galera ports (INPUT)
    # nor another node's (DOCKER-USER) answer, while the node itself reaches them
    inventory = site.inventory()
    own, other = (str(inventory.node(n).private_ip) for n in ("deis-1", "deis-2"))
    for host, port in ((own, 2379), (own, 3306), (other, 2379), (other, 4567)):
        code, out = run_in(
            site.node("deis-1"), "docker", "run", "--rm", "--network", overlay, BASE_IMAGE,
            "timeout", "10", "bash", "-c", FENCED.format(host=host, port=port),
        )  # fmt: skip
        assert code != 0 and "reached" not in out, f"{host}:{port} {out}"
    code, out = run_in(
        site.node("deis-1"), "timeout", "10", "bash", "-c", FENCED.format(host=other, port=2379)
    )
    assert (code, out.strip()) == (0, "reached"), out


@lab_full
def test_a_lost_deis_node_is_named_and_the_site_goes_on(lab_site: LabSite) -> None:
    site = lab_site
    lost = site.task_nodes()["pr-7-guestbook"]  # the node that runs the preview
    site.node(lost).stop(timeout=30)

    # Galera serves with 2 of 3 through the proxy: once the proxy has failed over (a connection
    # to the lost member dies with it), a new one writes and reads
    wait_until("a write through the proxy succeeds", site.write_survives, 90)
    with site.database() as cur:
        cur.execute("SELECT COUNT(*) FROM lab_lost.lost")
        assert cur.fetchone() == (1,)
    # Swarm runs the preview's task elsewhere, and it answers again
    wait_until(
        "the preview's task runs on another node",
        lambda: site.task_nodes(skip=lost).get("pr-7-guestbook") not in (None, lost),
        240,
    )
    wait_until("the preview answers again", lambda: site.page("pr-7-guestbook")[0] == 200, 120)
    smoke = site.cidemo("smoke")
    assert smoke.rc == 1
    failed = [line for line in smoke.out.splitlines() if lost in line and "FAIL" in line.upper()]
    assert failed, smoke.out

    # back: the node boots again, provision places what is missing, the member rejoins by IST
    site.node(lost).start()
    wait_until(
        f"{lost} booted again",
        lambda: run_in(site.node(lost), "cat", "/run/cidemo-lab/result")[1].strip() == "ok",
        300,
    )
    again = site.cidemo("provision", "--yes")
    assert again.rc == 0, again.out[-3000:] + again.err[-3000:]
    member = site.engines()[lost].containers.get(f"cidemo-{site.name}-galera-{lost}")
    assert "IST received" in member.logs().decode(errors="replace")
    assert site.cidemo("smoke").rc == 0


def test_destroy_leaves_no_cloud_resource_and_no_lab_node(
    conn: Connection, lab_site: LabSite
) -> None:
    site = lab_site
    destroyed = site.cidemo("destroy", "--yes")
    assert destroyed.rc == 0, destroyed.err[-2000:]
    assert find(conn, site.name, key_name=f"{site.name}-key") == []
    wait_until(
        "the lab nodes, networks and volumes are gone",
        lambda: not labd.leftovers(site.engine),
        120,
    )
