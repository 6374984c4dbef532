"""Integration fixtures: a real Docker engine, and throwaway sites that are destroyed afterwards."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from cidemo_infra.engines import ENGINE_ERRORS, negotiated_client
from cidemo_infra.errors import EngineError
from cidemo_infra.placement import firewall
from cidemo_infra.registry.keys import EtcdTls, Registry
from tests.conftest import Run, need, run_cidemo

LABEL_SITE = "io.cidemo.site"


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    try:
        return negotiated_client("unix:///var/run/docker.sock", node="test")
    except EngineError as exc:
        need(False, f"a Docker engine at unix:///var/run/docker.sock ({exc})")
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_subnet(client: docker.DockerClient, prefix: int = 24) -> ipaddress.IPv4Network:
    used = []
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Subnet") and ":" not in cfg["Subnet"]:
                used.append(ipaddress.IPv4Network(cfg["Subnet"]))
    for third in range(100, 200):
        candidate = ipaddress.IPv4Network(f"10.214.{third}.0/{prefix}")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError("no free 10.214.x.0/24 subnet for a test site")


@dataclass
class TestSite:
    __test__ = False  # a fixture's value, not a test class

    name: str
    path: Path
    state: Path
    data: dict[str, Any]

    def cidemo(self, *args: str, timeout: float = 900) -> Any:
        return run_cidemo(
            *args, "--site", str(self.path), "--state-dir", str(self.state), timeout=timeout
        )

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    @property
    def rw_port(self) -> int:
        return int(self.data["services"]["proxy"]["rw_port"])

    def registry(self) -> Registry:
        """etcd as the tool reaches it: https, with the site's client certificate."""
        port = self.data["services"]["etcd"]["port"]
        return Registry(f"https://127.0.0.1:{port}", tls=EtcdTls.of(self.state / "tls"))


def make_site(client: docker.DockerClient, tmp: Path, **overrides: Any) -> TestSite:
    name = "it" + secrets.token_hex(3)
    data: dict[str, Any] = {
        "name": name,
        "target": "local",
        "network": {"cidr": str(free_subnet(client))},
        "services": {
            "galera": {"cluster_name": name, "members": 3, "ttl": 10, "join_timeout": 120},
            "proxy": {"kind": "haproxy", "rw_port": free_port(), "ro_port": free_port()},
            "jenkins": {"enabled": True, "image": "project:jenkins-standin", "port": free_port()},
            "etcd": {"port": free_port()},
        },
        "timeouts": {"health": 240, "etcd": 60, "docker": 60},
    }
    for key, value in overrides.items():
        data[key] = value
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return TestSite(name, path, tmp / "state", data)


def remove_site(clients: list[docker.DockerClient], name: str) -> None:
    """The finalizer: whatever the test did, nothing labelled with the site survives."""
    flt = {"label": f"{LABEL_SITE}={name}"}
    for client in clients:
        for c in client.containers.list(all=True, filters=flt):
            c.remove(force=True)
        for n in client.networks.list(filters=flt):
            n.remove()
        for v in client.volumes.list(filters=flt):
            v.remove(force=True)
    firewall.remove(name)  # provision installed the site's chains on this machine


@pytest.fixture
def site_factory(engine: docker.DockerClient, tmp_path: Path) -> Iterator[Any]:
    made: list[TestSite] = []

    def factory(**overrides: Any) -> TestSite:
        site = make_site(engine, tmp_path / f"s{len(made)}", **overrides)
        made.append(site)
        return site

    yield factory
    for site in made:
        remove_site([engine], site.name)


def start_process(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A helper daemon of the test's own, in its own session, its output in `log`."""
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class SpareEngine:
    """A dockerd of the test's own: listening on `host`, data and state under `root`, its default
    network on a bridge of its own and no iptables rules. `start` launches it and waits for it (60
    s); `stop` sends SIGTERM and waits for it to exit, as at a host's shutdown (its containers are
    stopped by the daemon, not by a user, so their restart policy starts them again at the next
    `start`, with the same root and flags). `close` empties it, stops it and removes its root and
    bridge. Never `--bridge none`: a dockerd started so deletes the host's docker0, which the
    machine's own dockerd (same network namespace) still uses."""

    def __init__(
        self, root: Path, host: str, connect: Callable[[], docker.DockerClient], *extra: str
    ) -> None:
        self.root, self.host, self.connect, self.extra = root, host, connect, extra
        self.bridge = f"cidsp{secrets.token_hex(4)}"  # an interface name: at most 15 characters
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: docker.DockerClient | None = None
        self.log = root / "dockerd.log"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True, timeout=30)

    def start(self) -> docker.DockerClient:
        assert self.proc is None, "the spare dockerd is already running"
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    "dockerd",
                    "--host",
                    self.host,
                    "--data-root",
                    str(self.root / "data"),
                    "--exec-root",
                    str(self.root / "exec"),
                    "--pidfile",
                    str(self.root / "docker.pid"),
                    "--bridge",
                    self.bridge,
                    "--iptables=false",
                    "--ip-masq=false",
                    *self.extra,
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        self.client = None
        while self.client is None:
            try:
                self.client = self.connect()
            except (EngineError, *ENGINE_ERRORS):
                assert self.proc.poll() is None, self.log.read_text()[-2000:]
                late = time.monotonic() >= deadline
                assert not late, f"the dockerd on {self.host} did not answer in 60 s"
                time.sleep(0.5)
        return self.client

    def stop(self, timeout: float = 120) -> None:
        """SIGTERM and wait for the daemon to exit (it stops its containers first)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if self.client is not None:
            self.client.close()
            self.client = None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait(timeout=10)
            message = f"the dockerd on {self.host} did not exit within {timeout:.0f} s"
            raise AssertionError(message) from exc

    def close(self) -> None:
        try:
            if self.client is not None:
                for c in self.client.containers.list(all=True):
                    c.remove(force=True, v=True)
        finally:
            if self.proc is not None:
                proc, self.proc = self.proc, None
                stop_process(proc)
            subprocess.run(["ip", "link", "del", self.bridge], check=False, timeout=30)
            # the daemon leaves its default network namespace mounted under the exec root
            points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
            under = [m for m in points if m.startswith(f"{self.root}/")]
            for mount in reversed(under):
                subprocess.run(["umount", mount], check=False, timeout=30)
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def spare_dockerd(
    root: Path, host: str, connect: Callable[[], docker.DockerClient], *extra: str
) -> Iterator[docker.DockerClient]:
    """A `SpareEngine` started, waited for (60 s), emptied, stopped and removed after, with its
    bridge."""
    spare = SpareEngine(root, host, connect, *extra)
    try:
        yield spare.start()
    finally:
        spare.close()


@pytest.fixture
def second_engine() -> Iterator[tuple[str, docker.DockerClient]]:
    """A second dockerd with its own socket and data root, started and stopped by the test."""
    need(shutil.which("dockerd") is not None and os.geteuid() == 0, "dockerd and root")
    root = Path("/tmp/cidemo-test-engine2")
    url = f"unix://{root / 'docker.sock'}"

    def connect() -> docker.DockerClient:
        return negotiated_client(url, node="engine2")

    with spare_dockerd(root, url, connect) as client:
        yield url, client


def provision_converged(site: TestSite) -> Run:
    """`cidemo provision`; when only its closing smoke checks failed (a registration lapsing for a
    moment on a loaded shared machine), wait, bounded, until `cidemo smoke` passes."""
    result = site.cidemo("provision")
    if result.rc != 0 and "smoke checks failed" in result.err:
        for _ in range(12):
            smoke = site.cidemo("smoke")
            if smoke.rc == 0:
                return Run(0, result.out + smoke.out, result.err + smoke.err)
            time.sleep(10)
    return result
