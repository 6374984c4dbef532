"""The lab: a system container ("lab node") for every ACTIVE server of one site on the test
OpenStack, booting the user-data nova holds for it, so the OpenStack path runs end to end here.

    python -m tests.cloud.lab.labd build                 build the node and metadata images
    python -m tests.cloud.lab.labd run --tag TAG --base DIR   follow the cloud until SIGTERM
    python -m tests.cloud.lab.labd down [--base DIR]     remove every lab container, network, volume

`run` lists the servers carrying TAG (the site's `cidemo-site-<name>`) every 2 s and converges:
- a server that is ACTIVE and has no node gets one: a container named `cidemo-lab-<server>`, with
  the server's name as hostname, on a lab network that mirrors the server's neutron subnet (the
  port's fixed IP), with the project's images preloaded into its engine; only then does it join
  the "public" lab network (the test cloud's external subnet) at its floating IP, so the tool
  cannot reach it before it is whole;
- a server that is gone takes its node, the node's volume, and, once unused, the lab network and
  its metadata container with it;
- a node that is stopped stays stopped (a test stopped it: a lost node).
Each lab network has a metadata container that owns 169.254.169.254 and serves each node its
user-data, read through the compute API as the metadata service would serve it, plus a token
(`BASE/token`) by which a check knows that an answer came from the lab.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import openstack

from cidemo_infra import images as project_images
from cidemo_infra.console import Reporter
from cidemo_infra.placement import branch_store

HERE = Path(__file__).resolve().parent
LABEL = "io.cidemo.lab"  # value: the tag of the site the lab follows
LABEL_KIND = "io.cidemo.lab.kind"  # node, metadata, network, volume
LABEL_SERVER = "io.cidemo.lab.server"
PUBLIC_NETWORK = "cidemo-lab-public"
EXTERNAL_CIDR = "172.24.4.0/24"  # the test cloud's external subnet (tests/cloud/openstack)
METADATA_HOST = 3  # the metadata container's host number on each lab network (the site keeps 1-9)
NODE_FLAGS: dict[str, Any] = {  # reference/lab-nodes.md: what works here instead of --privileged
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
    "tmpfs": {"/run": "", "/run/lock": "", "/tmp": ""},
}
POLL = 2.0
# Each node's branch store: a directory of this machine's (XFS with reflinks), where a Flatcar
# node's cidemo-branch-store.service would mount a loop file (a container has no loop devices)
LAB_STORES = Path(branch_store.STORE) / ".lab"
log = logging.getLogger("labd")


@dataclass(frozen=True)
class ServerView:
    """What the lab needs of one server, read from nova and neutron."""

    id: str
    name: str
    status: str
    network_id: str
    cidr: str
    gateway: str
    fixed_ip: str
    floating_ip: str | None


def _short(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:10]


def node_name(server: ServerView) -> str:
    return f"cidemo-lab-{server.name}"


def network_name(server: ServerView) -> str:
    return f"cidemo-lab-net-{_short(server.network_id)}"


def metadata_name(server: ServerView) -> str:
    return f"cidemo-lab-md-{_short(server.network_id)}"


def metadata_ip(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr)[METADATA_HOST])


# ---- images -------------------------------------------------------------------------------------


def image_tags(base: str, etcd: Path) -> dict[str, str]:
    """Tags of the lab's own images: by a hash of their sources and the base, like the project's."""
    out = {}
    for name, folder in (("labnode", HERE / "node"), ("lab-metadata", HERE / "metadata")):
        digest = hashlib.sha256(base.encode())
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
        if name == "labnode":
            for binary in ("etcd", "etcdctl"):
                digest.update((etcd / binary).read_bytes())
        out[name] = f"cidemo/{name}:{digest.hexdigest()[:12]}"
    return out


def etcd_binaries() -> Path:
    """Where tests/cloud/lab/build-etcd.sh puts etcd and etcdctl (built once, cached)."""
    result = subprocess.run(
        ["bash", str(HERE / "build-etcd.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"labd: building etcd failed: {result.stderr.strip()[-500:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def build(client: docker.DockerClient) -> dict[str, str]:
    """The node and metadata images (on the project's Debian base), built where missing."""
    reporter = Reporter()
    base = project_images.base_image(client, reporter)
    etcd = etcd_binaries()
    tags = image_tags(base, etcd)
    for name, tag in tags.items():
        try:
            client.images.get(tag)
            continue
        except docker.errors.ImageNotFound:
            pass
        folder = HERE / ("node" if name == "labnode" else "metadata")
        context = _context(folder, etcd if name == "labnode" else None)
        log.info("building %s", tag)
        try:
            client.images.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                buildargs={"BASE_IMAGE": base},
                rm=True,
                forcerm=True,
                network_mode="host",
                labels={LABEL_KIND: "image"},
            )
        except docker.errors.BuildError as exc:
            errors = [str(e.get("error", "")).strip() for e in exc.build_log if e.get("error")]
            raise SystemExit(f"labd: building {tag} failed: {errors[-1:] or exc}") from None
    return tags


def _context(folder: Path, etcd: Path | None) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            tar.add(path, arcname=str(path.relative_to(folder)))
        if etcd is not None:
            for binary in ("etcd", "etcdctl"):
                tar.add(etcd / binary, arcname=f"etcd/{binary}")
    buffer.seek(0)
    return buffer


def site_images(client: docker.DockerClient, site_file: Path | None) -> list[str]:
    """The base and the project images the lab site places, built on this engine where missing,
    to preload into every node: a lab stands in for the operator's image cache."""
    if site_file is None:
        return []
    from cidemo_infra.placement.specs import image_refs
    from cidemo_infra.site import load_site

    site = load_site(site_file)
    reporter = Reporter()
    base = project_images.base_image(client, reporter)
    names = {
        ref.removeprefix(project_images.PROJECT_PREFIX)
        for ref in image_refs(site).values()
        if project_images.is_project_image(ref)
    }
    tags = project_images.ensure_images({"local": client}, {"local": names}, reporter)
    return [base, *sorted(tags.values())]


# ---- the cloud ----------------------------------------------------------------------------------


def read_servers(conn: Any, tag: str) -> list[ServerView]:
    views = []
    for server in conn.compute.servers(details=True):
        if tag not in (server.tags or []):
            continue
        ports = list(conn.network.ports(device_id=server.id))
        if not ports or not ports[0].fixed_ips:
            continue
        port = ports[0]
        fixed = port.fixed_ips[0]
        subnet = conn.network.get_subnet(fixed["subnet_id"])
        fips = list(conn.network.ips(port_id=port.id))
        views.append(
            ServerView(
                id=server.id,
                name=server.name,
                status=server.status,
                network_id=port.network_id,
                cidr=subnet.cidr,
                gateway=subnet.gateway_ip or str(ipaddress.ip_network(subnet.cidr)[1]),
                fixed_ip=fixed["ip_address"],
                floating_ip=fips[0].floating_ip_address if fips else None,
            )
        )
    return views


def user_data(admin: Any, server_id: str) -> bytes:
    """What nova holds for the server (admin: OS-EXT-SRV-ATTR:user_data), as the metadata
    service would serve it."""
    raw = admin.compute.get_server(server_id).user_data
    return base64.b64decode(raw) if raw else b""


# ---- the engine ---------------------------------------------------------------------------------


class Lab:
    def __init__(
        self,
        client: docker.DockerClient,
        conn: Any,
        admin: Any,
        tag: str,
        base: Path,
        preload: list[str],
        node_image: str,
        metadata_image: str,
    ) -> None:
        self.client = client
        self.conn = conn
        self.admin = admin
        self.tag = tag
        self.base = base
        self.preload = preload
        self.node_image = node_image
        self.metadata_image = metadata_image
        self.token = (base / "token").read_text().strip()
        self.busy: set[str] = set()
        self.lock = threading.Lock()

    def labels(self, kind: str, **extra: str) -> dict[str, str]:
        return {LABEL: self.tag, LABEL_KIND: kind, **extra}

    def containers(self, kind: str) -> list[Any]:
        return self.client.containers.list(
            all=True, filters={"label": [f"{LABEL}={self.tag}", f"{LABEL_KIND}={kind}"]}
        )

    def converge(self) -> None:
        servers = read_servers(self.conn, self.tag)
        present = {s.id for s in servers}
        nodes = {c.labels.get(LABEL_SERVER): c for c in self.containers("node")}
        for server in servers:
            if server.status != "ACTIVE":
                continue
            node = nodes.get(server.id)
            if node is None:
                self._start(server)
            elif server.floating_ip and node.status == "running" and server.id not in self.busy:
                self._ensure_public(node, server.floating_ip)
        for server_id, node in nodes.items():
            if server_id not in present and server_id not in self.busy:
                self._remove_node(node)
        self._remove_unused_networks()

    def _start(self, server: ServerView) -> None:
        with self.lock:
            if server.id in self.busy:
                return
            self.busy.add(server.id)
        threading.Thread(target=self._boot, args=(server,), daemon=True).start()

    def _boot(self, server: ServerView) -> None:
        try:
            started = time.monotonic()
            self._boot_node(server)
            log.info("node %s ready in %.0f s", server.name, time.monotonic() - started)
        except Exception as exc:  # one node's failure must not stop the others
            log.error("node %s: %s", server.name, exc)
        finally:
            with self.lock:
                self.busy.discard(server.id)

    def _boot_node(self, server: ServerView) -> None:
        network = self._ensure_network(server)
        via = self._ensure_metadata(server, network)
        self._put(
            self.client.containers.get(metadata_name(server)),
            f"/srv/metadata/{server.fixed_ip}",
            {"user_data": user_data(self.admin, server.id)},
        )
        volume = f"{node_name(server)}-docker"
        self.client.volumes.create(volume, labels=self.labels("volume"))
        branch_store.ensure_local()
        stores = LAB_STORES / node_name(server)
        stores.mkdir(parents=True, exist_ok=True)
        api = self.client.api
        host_config = api.create_host_config(
            binds={
                volume: {"bind": "/var/lib/docker", "mode": "rw"},
                str(stores): {"bind": branch_store.STORE, "mode": "rw"},
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                "/lib/modules": {"bind": "/lib/modules", "mode": "ro"},
            },
            **NODE_FLAGS,
        )
        # the CLI's --security-opt systempaths=unconfined: nothing masked or read-only in /proc
        host_config.update(MaskedPaths=[], ReadonlyPaths=[])
        container = api.create_container(
            self.node_image,
            name=node_name(server),
            hostname=server.name,
            labels=self.labels("node", **{LABEL_SERVER: server.id}),
            stop_signal="SIGRTMIN+3",
            host_config=host_config,
            networking_config=api.create_networking_config(
                {network: api.create_endpoint_config(ipv4_address=server.fixed_ip)}
            ),
        )
        node = self.client.containers.get(container["Id"])
        self._put(node, "/etc/cidemo-lab", {"node.env": f"METADATA_VIA={via}\n".encode()})
        node.start()
        log.info("node %s started (%s on %s)", server.name, server.fixed_ip, network)
        self._wait_booted(node)
        for ref in self.preload:
            self._load(node, ref)
        if server.floating_ip:
            self._ensure_public(node, server.floating_ip)

    def _wait_booted(self, node: Any, timeout: float = 900) -> None:
        """Until the node applied its user-data. Nothing may touch its engine before: a dockerd
        woken early through docker.socket makes the user-data's start of the TLS socket fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node.reload()
            if node.status != "running":
                raise RuntimeError(f"{node.name} stopped while booting")
            code, out = node.exec_run(["cat", "/run/cidemo-lab/result"])
            result = out.decode(errors="replace").strip() if code == 0 else ""
            if result == "ok":
                return
            if result.startswith("failed"):
                raise RuntimeError(f"{node.name}: its user-data did not apply: {result}")
            time.sleep(1)
        raise RuntimeError(f"{node.name}: its user-data was not applied in {timeout:g} s")

    def _load(self, node: Any, ref: str) -> None:
        have = node.exec_run(["docker", "image", "inspect", ref], demux=True)
        if have.exit_code == 0:
            return
        save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "exec", "-i", node.name, "docker", "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            check=False,
        )
        save.wait()
        if save.returncode or load.returncode:
            raise RuntimeError(f"{node.name}: loading {ref} failed: {load.stderr.decode()[-300:]}")

    def _ensure_network(self, server: ServerView) -> str:
        name = network_name(server)
        try:
            self.client.networks.get(name)
        except docker.errors.NotFound:
            pool = docker.types.IPAMPool(subnet=server.cidr, gateway=server.gateway)
            self.client.networks.create(
                name,
                driver="bridge",
                ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                labels=self.labels("network"),
            )
            log.info("network %s (%s) for neutron network %s", name, server.cidr, server.network_id)
        return name

    def _ensure_metadata(self, server: ServerView, network: str) -> str:
        """The network's metadata container; returns its address, the nodes' route to it."""
        address = metadata_ip(server.cidr)
        name = metadata_name(server)
        try:
            self.client.containers.get(name)
            return address
        except docker.errors.NotFound:
            pass
        api = self.client.api
        created = api.create_container(
            self.metadata_image,
            name=name,
            labels=self.labels("metadata"),
            host_config=api.create_host_config(
                cap_add=["NET_ADMIN"], restart_policy={"Name": "unless-stopped"}
            ),
            networking_config=api.create_networking_config(
                {network: api.create_endpoint_config(ipv4_address=address)}
            ),
        )
        container = self.client.containers.get(created["Id"])
        self._put(container, "/srv/metadata", {"token": self.token.encode()})
        container.start()
        return address

    def _ensure_public(self, node: Any, address: str) -> None:
        node.reload()
        if PUBLIC_NETWORK in node.attrs["NetworkSettings"]["Networks"]:
            return
        network = ensure_public_network(self.client, self.tag)
        network.connect(node, ipv4_address=address)
        log.info("node %s reachable at %s", node.name, address)

    def _remove_node(self, node: Any) -> None:
        volume = f"{node.name}-docker"
        node.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            self.client.volumes.get(volume).remove(force=True)
        shutil.rmtree(LAB_STORES / node.name, ignore_errors=True)
        log.info("node %s removed: its server is gone", node.name)

    def _remove_unused_networks(self) -> None:
        if self.busy:
            return  # a booting node's network may have no node on it yet
        nodes = self.containers("node")
        used = {name for c in nodes for name in c.attrs["NetworkSettings"]["Networks"]}
        for network in self.client.networks.list(filters={"label": f"{LABEL}={self.tag}"}):
            if network.name in used:
                continue
            for md in self.containers("metadata"):
                if network.name in md.attrs["NetworkSettings"]["Networks"]:
                    md.remove(force=True)
            network.remove()
            log.info("network %s removed: no node left on it", network.name)
            if network.name == PUBLIC_NETWORK:
                guard_external_subnet()

    @staticmethod
    def _put(container: Any, directory: str, files: dict[str, bytes]) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            parts = Path(directory.lstrip("/")).parts
            for i in range(len(parts)):
                info = tarfile.TarInfo("/".join(parts[: i + 1]))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for name, data in files.items():
                info = tarfile.TarInfo(f"{directory.lstrip('/')}/{name}")
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        container.put_archive("/", buffer.getvalue())


def guard_external_subnet() -> None:
    """With no lab serving it, the external subnet is unreachable from here again
    (tests/cloud/openstack/openstack-up set that route up)."""
    routes = subprocess.run(
        ["ip", "route", "show", EXTERNAL_CIDR], capture_output=True, text=True, check=False
    ).stdout
    if not routes.strip():
        subprocess.run(
            ["ip", "route", "add", "unreachable", EXTERNAL_CIDR], capture_output=True, check=False
        )


def ensure_public_network(client: docker.DockerClient, tag: str) -> Any:
    """The external subnet as a lab network; its gateway, 172.24.4.1, is this machine. The
    test cloud keeps that subnet unreachable from here while no lab serves it: the route goes."""
    try:
        return client.networks.get(PUBLIC_NETWORK)
    except docker.errors.NotFound:
        pass
    subprocess.run(
        ["ip", "route", "del", "unreachable", EXTERNAL_CIDR], capture_output=True, check=False
    )
    gateway = str(ipaddress.ip_network(EXTERNAL_CIDR)[1])
    pool = docker.types.IPAMPool(subnet=EXTERNAL_CIDR, gateway=gateway)
    return client.networks.create(
        PUBLIC_NETWORK,
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[pool]),
        labels={LABEL: tag, LABEL_KIND: "public"},
    )


def down(client: docker.DockerClient) -> list[str]:
    """Remove every lab container, network and volume (of any site); give the external subnet
    its unreachable route back."""
    removed = []
    flt = {"label": LABEL}
    for container in client.containers.list(all=True, filters=flt):
        container.remove(force=True, v=True)
        removed.append(f"container {container.name}")
    for volume in client.volumes.list(filters=flt):
        volume.remove(force=True)
        removed.append(f"volume {volume.name}")
    if LAB_STORES.exists():
        shutil.rmtree(LAB_STORES, ignore_errors=True)
        removed.append(f"branch stores {LAB_STORES}")
    for network in client.networks.list(filters=flt):
        network.remove()
        removed.append(f"network {network.name}")
    guard_external_subnet()
    return removed


def leftovers(client: docker.DockerClient) -> list[str]:
    flt = {"label": LABEL}
    return (
        [f"container {c.name}" for c in client.containers.list(all=True, filters=flt)]
        + [f"volume {v.name}" for v in client.volumes.list(filters=flt)]
        + [f"network {n.name}" for n in client.networks.list(filters=flt)]
    )


def run(tag: str, base: Path, site_file: Path | None, cloud: str) -> None:
    client = docker.from_env(version="auto")
    tags = build(client)
    preload = site_images(client, site_file)
    conn = openstack.connect(cloud=cloud)
    admin = openstack.connect(cloud=f"{cloud}-admin")
    lab = Lab(client, conn, admin, tag, base, preload, tags["labnode"], tags["lab-metadata"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    (base / "ready").write_text(f"{os.getpid()}\n")
    log.info("following servers tagged %s (token in %s)", tag, base / "token")
    while not stop.is_set():
        try:
            lab.converge()
        except Exception as exc:  # the cloud or the engine had a bad moment: try again
            log.warning("converge: %s", exc)
        stop.wait(POLL)
    (base / "ready").unlink(missing_ok=True)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="labd")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    runner = sub.add_parser("run")
    runner.add_argument("--tag", required=True, help="the site's tag, cidemo-site-<name>")
    runner.add_argument("--base", type=Path, required=True)
    runner.add_argument("--site", type=Path, help="preload the images this site places")
    runner.add_argument("--cloud", default="cidemo-test")
    sub.add_parser("down")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s labd %(levelname)s %(message)s", stream=sys.stderr
    )
    client = docker.from_env(version="auto")
    if args.command == "build":
        for name, tag in build(client).items():
            print(f"{name}: {tag}")
    elif args.command == "run":
        args.base.mkdir(parents=True, exist_ok=True)
        token = args.base / "token"
        if not token.exists():
            token.write_text(os.urandom(16).hex() + "\n")
        run(args.tag, args.base, args.site, args.cloud)
    else:
        for line in down(client):
            print(f"removed {line}")


if __name__ == "__main__":
    main()
