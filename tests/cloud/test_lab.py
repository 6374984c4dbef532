"""The OpenStack path end to end on this machine: the real module applied to the test OpenStack,
its servers booted as lab nodes from the user-data nova holds (tests/cloud/lab), the services
placed over Docker TLS at the floating IPs, checked, converged again, and destroyed to nothing.
"""

from __future__ import annotations

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
import pytest
import yaml
from openstack.connection import Connection

from cidemo_infra.cloud import find, sweep
from tests.cloud.conftest import missing
from tests.cloud.lab import labd
from tests.conftest import REPO, SITES, run_cidemo

pytestmark = pytest.mark.cloud
READY_TIMEOUT = 1200  # a cold machine builds etcd, the node image and the project's images


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

    def nodes(self) -> list[Any]:
        return self.engine.containers.list(all=True, filters={"label": f"{labd.LABEL}"})


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


def test_provision_on_lab_nodes_converges_checks_and_destroys_to_nothing(
    conn: Connection, lab_site: LabSite
) -> None:
    site = lab_site
    provisioned = site.cidemo("provision", "--yes")
    assert provisioned.rc == 0, provisioned.out[-3000:] + provisioned.err[-3000:]

    nodes = {n: site.node(n) for n in ("deis-1", "deis-2", "deis-3", "standalone-1")}
    for name, node in nodes.items():
        code, result = run_in(node, "cat", "/run/cidemo-lab/result")
        assert (code, result.strip()) == (0, "ok"), f"{name}: {result}"
    code, members = run_in(nodes["deis-1"], "etcdctl", "member", "list")
    assert code == 0 and members.count("started") == 3, members

    smoke = site.cidemo("smoke")
    assert smoke.rc == 0, smoke.out + smoke.err

    again = site.cidemo("provision", "--yes")
    assert again.rc == 0, again.err[-2000:]
    assert "infrastructure: no changes" in again.out
    assert "no changes: the site is converged (0 actions)" in again.out

    # the metadata guard: the node reaches the (lab's) metadata service, its containers do not
    code, token = run_in(
        nodes["deis-1"], "curl", "-sf", "-m", "5", "http://169.254.169.254/cidemo-lab/token"
    )
    assert (code, token.strip()) == (0, site.token)
    base = "cidemo/debian:bookworm-slim"
    probe = "exec 3<>/dev/tcp/169.254.169.254/80 && echo reached"
    code, out = run_in(
        nodes["deis-1"], "docker", "run", "--rm", base, "timeout", "10", "bash", "-c", probe
    )
    assert code != 0 and "reached" not in out, out

    destroyed = site.cidemo("destroy", "--yes")
    assert destroyed.rc == 0, destroyed.err[-2000:]
    assert find(conn, site.name, key_name=f"{site.name}-key") == []
    wait_until(
        "the lab nodes, networks and volumes are gone", lambda: not labd.leftovers(site.engine), 120
    )
