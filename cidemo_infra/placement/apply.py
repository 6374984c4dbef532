"""The executor: the only part of placement with side effects, with a health gate per container.

Galera members are created, started or replaced one at a time, each waiting until Synced and
registered before the next; a replace never takes the cluster below quorum. The other containers
(the proxy, Jenkins, the router) are placed at the same time as the members, each behind its own
health gate; networks come first and removals last.
"""

from __future__ import annotations

import concurrent.futures
import io
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import docker.types

from cidemo_infra.console import Reporter
from cidemo_infra.engines import ENGINE_ERRORS, engine_error, unique_clients
from cidemo_infra.errors import PlacementError
from cidemo_infra.galera.member import member_status
from cidemo_infra.placement.plan import Action, phases
from cidemo_infra.placement.specs import ContainerSpec, NetworkSpec, quorum
from cidemo_infra.probes import http_answers
from cidemo_infra.registry.keys import (
    DATABASE_SERVICES,
    JENKINS_SERVICE,
    PROXY_SERVICES,
    Registry,
)

STOP_TIMEOUT = 60
GATE_POLL = 0.25  # seconds between two health probes of a container being placed
SECRET_OWNER = {"jenkins": 1000}  # Jenkins reads its secret as uid 1000; the others as root
# Who reads /etc/cidemo/tls: (uid, gid) of the image's service user (pinned in the Dockerfiles);
# root for images whose entrypoint starts as root (etcd, galera) and hands the files on.
HAPROXY_IDS = (100, 101)
TLS_OWNER = {
    "jenkins": (1000, 1000),
    "dbproxy": HAPROXY_IDS,
    "router": HAPROXY_IDS,
    "etcd-bridge": HAPROXY_IDS,
}


@dataclass
class Executor:
    site: str
    clients: Mapping[str, docker.DockerClient]
    secrets: Mapping[str, str]
    registry: Callable[[], Registry]
    reporter: Reporter
    health_timeout: float
    galera_members: int
    jenkins_url: Callable[[], str | None]  # where the tool probes Jenkins from here
    tls_dir: Path | None = None  # the site's TLS material (tls/pki.py) for specs' tls_files

    def apply(self, actions: list[Action]) -> None:
        """Networks first, in order; then the Galera members' actions one after another (in
        their order: a bootstrap first) and every other container's at the same time, each
        behind its health gate; removals last, in order. The first failure (in `actions`' order)
        is raised once every lane has stopped."""
        plan = phases(actions)
        self._run_in_order(plan.networks)
        if len(plan.lanes) > 1:
            with concurrent.futures.ThreadPoolExecutor(len(plan.lanes)) as pool:
                failures = [f for f in pool.map(self._lane, plan.lanes) if f is not None]
        else:
            failures = [f for f in map(self._lane, plan.lanes) if f is not None]
        if failures:
            first = min(failures, key=lambda f: actions.index(f[0]))
            for action, exc in failures:
                if exc is not first[1]:
                    self.reporter.step(f"also failed: {action.kind} {action.name}: {exc}")
            raise first[1]
        self._run_in_order(plan.removals)

    def _lane(self, lane: list[Action]) -> tuple[Action, Exception] | None:
        """Apply `lane` in order; stop at its first failure and return it. A lane of members
        ends when every member is Synced and registered again (a join's donor was Desynced)."""
        for action in lane:
            try:
                self._run_in_order([action])
            except Exception as exc:  # raised by apply() once all lanes stopped
                return action, exc
        if lane[-1].role == "galera":
            try:
                self._gate_members(lane[-1])
            except Exception as exc:
                return lane[-1], exc
        return None

    def _gate_members(self, last: Action) -> None:
        """Wait until every member of the site is registered and Synced."""
        deadline = time.monotonic() + self.health_timeout
        waiting: list[str] = []
        while time.monotonic() < deadline:
            members = self._galera_containers()
            live = self.registry().all_services()
            waiting = [
                c.name
                for c in members
                if not all(
                    any(r.container == c.name for r in live.get(s, [])) for s in DATABASE_SERVICES
                )
            ]
            if not waiting:
                waiting = [c.name for c in members if not member_status(c).is_synced]
                if not waiting:
                    return
            time.sleep(GATE_POLL)
        raise PlacementError(
            f"node {last.node}: after {last.kind} {last.name}, members "
            f"{', '.join(waiting)} not Synced and registered after {self.health_timeout:.0f} s"
        )

    def _run_in_order(self, actions: list[Action]) -> None:
        for action in actions:
            self.reporter.step(
                f"{action.kind} {action.name} on node {action.node} ({action.reason})"
            )
            self._apply_one(action)

    def _apply_one(self, action: Action) -> None:
        client = self.clients[action.engine]
        try:
            if action.kind == "create-network":
                assert action.network is not None
                self._create_network(client, action.network)
            elif action.kind == "remove-network":
                client.networks.get(action.name).remove()
            elif action.kind == "remove":
                self._remove(client, action.name)
            elif action.kind in ("create", "replace", "start"):
                assert action.spec is not None
                if action.kind == "replace":
                    self._check_quorum(action.spec)
                    self._remove(client, action.name)
                if action.kind in ("create", "replace"):
                    self._create(client, action.spec)
                else:
                    client.api.start(action.name)
                self._gate(client, action.spec)
        except ENGINE_ERRORS as exc:
            raise engine_error(action.node, f"{action.kind} {action.name}", exc) from None

    def _create_network(self, client: docker.DockerClient, net: NetworkSpec) -> None:
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=net.subnet, iprange=net.ip_range)]
        )
        # The service tier needs no traffic to the outside; no NAT keeps addresses intact
        # between engines that route to each other.
        client.networks.create(
            net.name,
            driver="bridge",
            ipam=ipam,
            labels=net.labels,
            options={"com.docker.network.bridge.enable_ip_masquerade": "false"},
        )

    def _remove(self, client: docker.DockerClient, name: str) -> None:
        try:
            client.api.stop(name, timeout=STOP_TIMEOUT)
            client.api.remove_container(name)
        except docker.errors.NotFound:
            pass

    def create(self, spec: ContainerSpec, start: bool = True) -> str:
        """Create one container from its spec, secrets copied in; start it unless told not to."""
        return self._create(self.clients[spec.engine], spec, start)

    def _create(self, client: docker.DockerClient, spec: ContainerSpec, start: bool = True) -> str:
        api = client.api
        for volume, _ in spec.volumes:
            try:
                client.volumes.get(volume)
            except docker.errors.NotFound:
                client.volumes.create(
                    volume,
                    labels={
                        "io.cidemo.site": spec.site,
                        "io.cidemo.role": spec.role,
                        "io.cidemo.node": spec.node,
                    },
                )
        host_config = api.create_host_config(
            binds={v: {"bind": path, "mode": "rw"} for v, path in spec.volumes},
            port_bindings={f"{c}/tcp": (ip, h) for c, ip, h in spec.ports},
            restart_policy={"Name": "unless-stopped"},
            init=True,
            network_mode="host" if spec.network == "host" else None,
        )
        networking = None
        if spec.network and spec.network != "host":
            networking = api.create_networking_config(
                {
                    spec.network: api.create_endpoint_config(
                        ipv4_address=spec.ip, aliases=[spec.hostname or spec.name]
                    )
                }
            )
        created = api.create_container(
            spec.image,
            name=spec.name,
            hostname=spec.hostname,
            environment=dict(spec.env),
            command=list(spec.command) or None,
            labels=spec.labels,
            host_config=host_config,
            networking_config=networking,
            ports=[c for c, _, _ in spec.ports],
            detach=True,
            # the upgrade's bridge runs socat in the proxy's image, not the proxy it checks
            healthcheck={"Test": ["NONE"]} if spec.role == "etcd-bridge" else None,
        )
        if spec.secrets:
            api.put_archive(created["Id"], "/etc", self._secrets_tar(spec))
        if spec.tls_files:
            api.put_archive(created["Id"], "/etc", self._tls_tar(spec))
        if dict(spec.env).get("PROXY_KIND") == "maxscale":
            from cidemo_infra.proxy.maxscale import render_maxscale  # jinja2: MaxScale sites only

            config = render_maxscale(
                self.registry().services("database_port"),
                self.secrets["monitor_password"],
                networks=dict(spec.env)["BACKEND_CIDRS"].split(","),
            )
            api.put_archive(created["Id"], "/etc", _tar({"maxscale.cnf": config}, 0o600))
        if start:
            api.start(created["Id"])
        return str(created["Id"])

    def _secrets_tar(self, spec: ContainerSpec) -> bytes:
        """/etc/cidemo/secrets/<name>, one file per secret the spec names; values from the
        state directory, never from the spec."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for folder in ("cidemo", "cidemo/secrets"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            for name in spec.secrets:
                data = self.secrets[name].encode()
                info = tarfile.TarInfo(f"cidemo/secrets/{name}")
                info.size, info.mode = len(data), 0o400
                info.uid = info.gid = SECRET_OWNER.get(spec.role, 0)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def _tls_tar(self, spec: ContainerSpec) -> bytes:
        """/etc/cidemo/tls/<file>, read from the site's TLS directory; only the service's user
        can read them (/etc/cidemo itself stays closed except for traversal)."""
        if self.tls_dir is None:
            raise PlacementError(f"{spec.name} needs TLS files, but the site has no TLS directory")
        uid, gid = TLS_OWNER.get(spec.role, (0, 0))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for folder, mode, owner in (("cidemo", 0o711, 0), ("cidemo/tls", 0o500, uid)):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, mode
                info.uid, info.gid = owner, gid if owner else 0
                tar.addfile(info)
            for name, source in spec.tls_files:
                path = self.tls_dir / source
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    raise PlacementError(
                        f"{spec.name}: TLS file {path} is missing (cidemo provision creates it)"
                    ) from None
                info = tarfile.TarInfo(f"cidemo/tls/{name}")
                info.size, info.mode = len(data), 0o400
                info.uid, info.gid = uid, gid
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def _check_quorum(self, spec: ContainerSpec) -> None:
        if spec.role != "galera":
            return
        client = self.clients[spec.engine]
        try:
            replaced = member_status(client.containers.get(spec.name))
        except docker.errors.NotFound:
            return
        if not replaced.is_synced:
            return
        synced_others = sum(
            1
            for c in self._galera_containers()
            if c.name != spec.name and member_status(c).is_synced
        )
        if synced_others < quorum(self.galera_members):
            raise PlacementError(
                f"replacing galera member {spec.name} would leave {synced_others} of "
                f"{self.galera_members} members Synced (quorum needs "
                f"{quorum(self.galera_members)}); heal the others first (cidemo provision) "
                "or recover (cidemo recover)"
            )

    def _galera_containers(self) -> list[docker.models.containers.Container]:
        found = []
        for client in unique_clients(self.clients).values():
            found += client.containers.list(
                filters={"label": [f"io.cidemo.site={self.site}", "io.cidemo.role=galera"]}
            )
        return found

    def _gate(self, client: docker.DockerClient, spec: ContainerSpec) -> None:
        """Wait until the container is healthy for its role, or fail naming why."""
        deadline = time.monotonic() + self.health_timeout
        last = "not checked yet"
        while time.monotonic() < deadline:
            container = client.containers.get(spec.name)
            if container.status in ("exited", "dead"):
                logs = container.logs(tail=3).decode(errors="replace").strip().splitlines()
                raise PlacementError(
                    f"node {spec.node}: {spec.name} exited "
                    f"({container.attrs['State'].get('ExitCode')}): "
                    f"{logs[-1] if logs else 'no log output'}"
                )
            ok, last = self._is_healthy(container, spec)
            if ok:
                return
            time.sleep(GATE_POLL)
        if spec.role == "galera":  # say what the member itself reports, not only etcd
            status = member_status(client.containers.get(spec.name))
            last = f"{last}; " + (status.error or f"state {status.state or 'unknown'}")
        raise PlacementError(
            f"node {spec.node}: {spec.name} not healthy after {self.health_timeout:.0f} s: {last}"
        )

    def _is_healthy(
        self, container: docker.models.containers.Container, spec: ContainerSpec
    ) -> tuple[bool, str]:
        if spec.role == "etcd":
            return self.registry().is_healthy()
        if spec.role == "galera":
            # a member registers only while Synced: ask etcd (one HTTP read) until it has, then
            # confirm with the member itself (an exec), instead of an exec every poll
            registered, why = self._registered(DATABASE_SERVICES, spec.name)
            if not registered:
                return False, why
            status = member_status(container)
            if not status.is_synced:
                return False, status.error or f"state {status.state or 'unknown'}"
            return True, "Synced and registered"
        if spec.role == "dbproxy":
            if dict(spec.env).get("PROXY_KIND") == "maxscale":  # a site image: no registrations
                return container.status == "running", container.status
            return self._registered(PROXY_SERVICES, spec.name)
        if spec.role == "gateway":
            return container.status == "running", container.status
        if spec.role == "jenkins":
            url = self.jenkins_url()
            if url and not http_answers(url):
                return False, f"{url} does not answer"
            return self._registered((JENKINS_SERVICE,), spec.name)
        return container.status == "running", container.status

    def _registered(self, services: tuple[str, ...], container: str) -> tuple[bool, str]:
        live = self.registry().all_services()  # one read for every service
        for service in services:
            if not any(r.container == container for r in live.get(service, [])):
                return False, f"not registered under /services/{service} yet"
        return True, "registered"


def _tar(files: dict[str, str], mode: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
