"""The `swarm` platform: each environment is a Docker Swarm service behind the site's router.

- The swarm: on a cloud, the first deis node's engine initialises it (advertising its private
  address), the other deis nodes join as managers (three managers survive the loss of one) and the
  standalone node as a worker; locally the standalone node's engine is a one-node swarm
  advertising 127.0.0.1. `swarm init` runs only on an engine that is in no swarm; an engine
  already in one is used as it is (cidemo never leaves, forces or re-creates a swarm).
- The network: an attachable overlay `cidemo-<site>-apps` that the services join, and that the
  router (and locally the database proxy) are connected to. Locally apps reach the proxy by its
  container name there (the site's bridge network is closed to overlay traffic); on a cloud the
  proxy is on the standalone node's host network and apps reach its private address.
- A service `cidemo-<site>-app-<env>`: one replica, rolling updates that start the new task
  before stopping the old one and roll back on failure, restarted on any exit, endpoint mode
  `dnsrr` (the router resolves every task address; a virtual IP needs IPVS in the kernel, which
  not every host has). Secrets are Swarm secrets mounted at `/run/secrets/<name>`; the app gets
  `<NAME>_FILE` pointing there, never the value (e.g. `DB_PASS_FILE=/run/secrets/db_pass`).
  A secret's name is an HMAC of its value under a key only the site has
  (`secrets/swarm_secret_names` in the state directory), so listing the swarm's secrets tells
  nothing about their values.
- The route: etcd `<prefix>/services/apps/<env>` = `<service>:<app_port>` (no TTL), which the
  router turns into `Host: <env>.<domain>` -> the service's tasks.

Labels: services and secrets carry `io.cidemo.site`, `io.cidemo.role=app`, `io.cidemo.env`.
The overlay network and the tasks' containers do not carry `io.cidemo.site`: placement owns every
container and network with that label and would plan to remove them; they carry
`io.cidemo.apps-of=<site>` instead, and `placement.teardown.remove_site_apps` removes all of it.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import docker
import docker.errors
import docker.types
import etcd

from cidemo_infra.console import Reporter
from cidemo_infra.databases.branches import Placement
from cidemo_infra.engines import ENGINE_ERRORS, engine_error, unique_clients
from cidemo_infra.envs.locks import platform_lock
from cidemo_infra.envs.names import Environment
from cidemo_infra.errors import PlacementError, UsageError
from cidemo_infra.inventory import Inventory, InventoryNode
from cidemo_infra.lifecycle import Session
from cidemo_infra.placement.specs import (
    LABEL_ROLE,
    LABEL_SITE,
    LABEL_SPEC,
    PROXY_RW_PORT,
    apps_domain,
    container_name,
    has_router,
)
from cidemo_infra.placement.teardown import GONE_TIMEOUT, LABEL_APPS_OF
from cidemo_infra.platforms.platform import Deployment
from cidemo_infra.registry.keys import Registry
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir

LABEL_ENV = "io.cidemo.env"
LABEL_SECRET = "io.cidemo.secret"
ROLE_APP = "app"
SWARM_PORT = 2377
NAME_MAX = 63  # a service name is a DNS label
SECRET_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,62}$")
SECRETS_DIR = "/run/secrets"
SECRET_NAMES_KEY = "swarm_secret_names"  # the site secret that keys Swarm secrets' names
NS = 1_000_000_000
UPDATE_MONITOR = 5 * NS  # a new task that fails this soon after starting rolls the update back
TASK_POLL = 0.1  # seconds between two readings of a deploying service and its tasks
STOP_GRACE = 10 * NS


def service_name(site: str, env: str) -> str:
    name = f"cidemo-{site}-app-{env}"
    if len(name) > NAME_MAX:
        raise UsageError(
            f"environment '{env}': service name {name} is longer than {NAME_MAX} characters; "
            "use a shorter site name or environments.app"
        )
    return name


def apps_network(site: str) -> str:
    return f"cidemo-{site}-apps"


def route_key(prefix: str, env: str) -> str:
    return f"{prefix}/services/apps/{env}"


def maintenance_key(prefix: str, env: str) -> str:
    """While it exists the router answers the env's host 503 with Retry-After = its value."""
    return f"{prefix}/services/maintenance/{env}"


def secret_name(site: str, env: str, key: str, value: str, names_key: bytes) -> str:
    """Swarm secrets cannot change, so a new value gets a new name: an HMAC of the value under
    the site's secret `names_key`, within Swarm's 64 characters. Whoever can list the swarm's
    secrets cannot test guesses of a value against its name without that key."""
    message = f"{site}/{env}/{key}\0".encode() + value.encode()
    digest = hmac.new(names_key, message, hashlib.sha256)
    return f"cidemo-{site}-{digest.hexdigest()[:20]}"


@dataclass(frozen=True)
class SecretMount:
    key: str  # DB_PASS
    name: str  # the Swarm secret's name

    @property
    def file(self) -> str:
        return self.key.lower()


@dataclass(frozen=True)
class ServiceSpec:
    """Desired state of one app service, computed from data (no values of secrets)."""

    name: str
    site: str
    env: str
    image: str
    environment: tuple[tuple[str, str], ...]
    secrets: tuple[SecretMount, ...]
    network: str
    constraints: tuple[str, ...] = ()
    limits: tuple[float, int] | None = None  # previews: (CPUs, memory MiB)

    @property
    def spec_hash(self) -> str:
        fields = asdict(self)
        if fields["limits"] is None:
            del fields["limits"]  # services deployed before limits existed keep their hash
        data = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_SITE: self.site,
            LABEL_ROLE: ROLE_APP,
            LABEL_ENV: self.env,
            LABEL_SPEC: self.spec_hash,
        }

    def env_list(self) -> list[str]:
        files = [(f"{s.key}_FILE", f"{SECRETS_DIR}/{s.file}") for s in self.secrets]
        return [f"{k}={v}" for k, v in (*self.environment, *files)]


def service_spec(
    site: Site,
    env: Environment,
    image: str,
    environment: Mapping[str, str],
    secrets: tuple[SecretMount, ...],
) -> ServiceSpec:
    for mount in secrets:
        if not SECRET_NAME.match(mount.key):
            raise UsageError(
                f"secret {mount.key!r} of {env.name}: secret names are environment variable "
                "names in capitals (e.g. DB_PASS)"
            )
    limits = site.environments.preview_limits.app
    clashes = sorted({f"{s.key}_FILE" for s in secrets} & set(environment))
    if clashes:
        raise UsageError(f"{env.name}: {clashes[0]} is set both as a setting and for a secret")
    return ServiceSpec(
        name=service_name(site.name, env.name),
        site=site.name,
        env=env.name,
        image=image,
        environment=tuple(sorted(environment.items())),
        secrets=tuple(sorted(secrets, key=lambda s: s.key)),
        network=apps_network(site.name),
        constraints=("node.labels.io.cidemo.role == deis",) if site.target != "local" else (),
        limits=(limits.cpus, limits.memory_mb) if env.is_preview else None,
    )


@dataclass(frozen=True)
class SwarmMember:
    node: InventoryNode
    engine: str
    address: str  # what the engine advertises to the swarm


def swarm_members(site: Site, inventory: Inventory) -> list[SwarmMember]:
    """The manager first. Locally one engine (the standalone node's): engines on one machine
    cannot advertise 127.0.0.1 to each other. On a cloud: the deis nodes, then the standalone."""
    standalone = inventory.of_role("standalone")[0]
    if site.target == "local":
        return [SwarmMember(standalone, standalone.engine, "127.0.0.1")]
    nodes = [*inventory.of_role("deis"), standalone]
    return [SwarmMember(n, n.engine, str(n.private_ip)) for n in nodes]


def swarm_role(member: SwarmMember) -> str:
    """Deis nodes manage the swarm (three managers survive the loss of one); others work."""
    return "manager" if member.node.role == "deis" else "worker"


class SwarmPlatform:
    name = "swarm"

    def __init__(
        self,
        site: Site,
        state: StateDir,
        inventory: Inventory,
        clients: Mapping[str, docker.DockerClient],
        registry: Registry,
        timeout: float,
        reporter: Reporter | None = None,
    ) -> None:
        self.site = site
        self.reporter = reporter or Reporter(quiet=True)
        self.state = state
        self.inventory = inventory
        self.clients = clients
        self.registry = registry
        self.timeout = timeout
        self.members = swarm_members(site, inventory)
        self.manager = clients[self.members[0].engine]
        self._prepared = False

    @classmethod
    def for_session(cls, session: Session) -> SwarmPlatform:
        return cls(
            session.site,
            session.state,
            session.inventory,
            session.clients,
            session.registry(),
            float(session.site.timeouts.health),
            session.reporter,
        )

    def url_of(self, env: Environment) -> str:
        host = f"{env.name}.{apps_domain(self.site)}"
        if self.site.target == "local":
            return f"http://{host}:{self.site.environments.router_port}/"
        return f"http://{host}/"

    def database_address(self) -> tuple[str, int]:
        if self.site.target == "local":
            return container_name(self.site, "dbproxy"), PROXY_RW_PORT
        standalone = self.inventory.of_role("standalone")[0]
        return str(standalone.private_ip), PROXY_RW_PORT

    def branch_placements(self) -> builtins.list[Placement]:
        """Locally the standalone node (the one-node swarm); on a cloud the deis nodes, where the
        apps run. Each on the apps network, where the apps reach it by its container name."""
        self.prepare()
        network = apps_network(self.site.name)
        if self.site.target == "local":
            nodes = self.inventory.of_role("standalone")[:1]
        else:
            nodes = self.inventory.of_role("deis")
        return [Placement(n.engine, n.name, network) for n in nodes]

    def check_deploy(self, image: str) -> None:
        """The router is placed and (locally) the image is on the engine; reads only."""
        self._check_router()
        self._check_image(image)

    def _check_router(self) -> None:
        if not has_router(self.site):
            raise UsageError(
                f"site '{self.site.name}' has no environments section; add one (at least "
                "environments.app) and run cidemo provision, which places the app router"
            )
        standalone = self.inventory.of_role("standalone")[0]
        router = container_name(self.site, "router")
        try:
            self.clients[standalone.engine].api.inspect_container(router)
        except docker.errors.NotFound:
            raise UsageError(
                f"the app router {router} is not placed; run cidemo provision first"
            ) from None
        except ENGINE_ERRORS as exc:
            raise engine_error(standalone.name, f"inspect container {router}", exc) from None

    def prepare(self) -> None:
        """The swarm, the apps network, and the router and proxy attached to it (idempotent)."""
        if self._prepared:
            return
        self._check_router()
        with platform_lock(self.state):
            self._ensure_swarm()
            self._ensure_network()
            standalone = self.inventory.of_role("standalone")[0]
            # on a cloud the proxy shares the node's network (a host-networked container cannot
            # join an overlay) and apps reach it at the node's private address instead
            roles = ("router", "dbproxy") if self.site.target == "local" else ("router",)
            with concurrent.futures.ThreadPoolExecutor(len(roles)) as pool:  # both at once
                for done in [
                    pool.submit(self._attach, standalone, container_name(self.site, role))
                    for role in roles
                ]:
                    done.result()
        self._prepared = True

    def deploy(
        self,
        env: Environment,
        image: str,
        environment: dict[str, str],
        secrets: Mapping[str, str] | None = None,
    ) -> str:
        self.prepare()
        self._check_image(image)
        mounts = tuple(
            SecretMount(key, self._ensure_secret(env, key, value))
            for key, value in sorted((secrets or {}).items())
        )
        spec = service_spec(self.site, env, image, environment, mounts)
        self._converge(spec)
        self._write_route(env, spec)
        self._prune_secrets(env, {m.name for m in mounts})
        return self.url_of(env)

    def remove(self, env: Environment) -> bool:
        name = service_name(self.site.name, env.name)
        removed = False
        try:
            self.manager.api.remove_service(name)
            removed = True
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            raise engine_error(self.members[0].node.name, f"remove service {name}", exc) from None
        self._delete_route(env)
        self._wait_tasks_gone(name)
        self._prune_secrets(env, set())
        return removed

    def image_of(self, env: Environment) -> str | None:
        service = self._service(service_name(self.site.name, env.name))
        if service is None:
            return None
        return str(service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])

    def list(self) -> list[Deployment]:
        found = []
        for service in self._services():
            labels = service["Spec"].get("Labels") or {}
            name = labels.get(LABEL_ENV, "")
            found.append(
                Deployment(
                    env=name,
                    image=str(service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]),
                    url=self.url_of(Environment(name, "preview")),
                    updated=_iso(service.get("UpdatedAt", "")),
                )
            )
        return sorted(found, key=lambda d: d.env)

    def _ensure_swarm(self) -> None:
        manager = self.members[0]
        self._join_or_init(manager, None)
        if len(self.members) == 1:
            return
        tokens = self.manager.api.inspect_swarm()["JoinTokens"]
        for member in self.members[1:]:
            token = tokens["Manager" if swarm_role(member) == "manager" else "Worker"]
            self._join_or_init(member, (f"{manager.address}:{SWARM_PORT}", token))
        self._label_nodes()

    def _join_or_init(self, member: SwarmMember, join: tuple[str, str] | None) -> None:
        client = self.clients[member.engine]
        node = member.node.name
        try:
            swarm = client.info().get("Swarm") or {}
            state = swarm.get("LocalNodeState", "inactive")
            if state == "active":
                if join is None and not swarm.get("ControlAvailable"):
                    raise PlacementError(
                        f"node {node}: its engine is a swarm worker, not a manager; the first "
                        "node of the swarm must manage it"
                    )
                return
            if state != "inactive":
                raise PlacementError(
                    f"node {node}: the engine's swarm state is '{state}' "
                    f"({swarm.get('Error') or 'no detail'}); cidemo never leaves or forces a "
                    "swarm: repair it by hand (docker info)"
                )
            listen = f"{member.address}:{SWARM_PORT}"
            if join is None:
                client.api.init_swarm(advertise_addr=member.address, listen_addr=listen)
            else:
                client.api.join_swarm(
                    [join[0]], join[1], listen_addr=listen, advertise_addr=member.address
                )
        except docker.errors.APIError as exc:
            if "already part of a swarm" in str(exc):
                return  # another run initialised it a moment ago
            what = "swarm init" if join is None else "swarm join"
            raise engine_error(node, what, exc) from None
        except ENGINE_ERRORS as exc:
            raise engine_error(node, "swarm", exc) from None

    def _label_nodes(self) -> None:
        """Cloud swarms: apps run on the deis nodes only (node label io.cidemo.role), and the deis
        nodes manage the swarm, so losing one keeps a raft majority (a swarm that joined them as
        workers gets them promoted)."""
        for member in self.members:
            node_id = self.clients[member.engine].info()["Swarm"]["NodeID"]
            node = self.manager.api.inspect_node(node_id)
            spec = node["Spec"]
            role = swarm_role(member)
            labelled = (spec.get("Labels") or {}).get(LABEL_ROLE) == member.node.role
            if labelled and spec.get("Role") == role:
                continue
            spec["Labels"] = {**(spec.get("Labels") or {}), LABEL_ROLE: member.node.role}
            spec["Role"] = role
            self.manager.api.update_node(node_id, node["Version"]["Index"], spec)

    def _ensure_network(self) -> None:
        name = apps_network(self.site.name)
        try:
            found = [n for n in self.manager.api.networks(names=[name]) if n["Name"] == name]
            if found:
                net = found[0]
                if net.get("Driver") != "overlay" or not net.get("Attachable"):
                    raise PlacementError(
                        f"network {name} exists but is not an attachable overlay network; "
                        "remove it (docker network rm) and retry"
                    )
                return
            self.manager.api.create_network(
                name,
                driver="overlay",
                attachable=True,
                check_duplicate=True,
                labels={LABEL_APPS_OF: self.site.name, LABEL_ROLE: "apps-network"},
            )
        except ENGINE_ERRORS as exc:
            raise engine_error(self.members[0].node.name, f"create network {name}", exc) from None

    def _attach(self, node: InventoryNode, container: str) -> None:
        network = apps_network(self.site.name)
        client = self.clients[node.engine]
        try:
            info = client.api.inspect_container(container)
            if network in (info["NetworkSettings"].get("Networks") or {}):
                return
            client.api.connect_container_to_network(container, network)
        except docker.errors.NotFound:
            raise PlacementError(
                f"node {node.name}: container {container} is missing; run cidemo provision"
            ) from None
        except docker.errors.APIError as exc:
            if "already exists" in str(exc):
                return
            raise engine_error(node.name, f"connect {container} to {network}", exc) from None
        except ENGINE_ERRORS as exc:
            raise engine_error(node.name, f"connect {container} to {network}", exc) from None

    def _check_image(self, image: str) -> None:
        """Locally there is no registry: an image missing from the engine can never start."""
        if self.site.target != "local":
            return
        for engine, client in unique_clients(
            {m.engine: self.clients[m.engine] for m in self.members}
        ).items():
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                hint = (
                    "cidemo provision builds environments.build's image"
                    if self.site.environments.build
                    else "build or load it first"
                )
                raise UsageError(
                    f"image {image} is not on engine {engine} and no registry serves it; {hint}"
                ) from None
            except ENGINE_ERRORS as exc:
                raise engine_error(engine, f"inspect image {image}", exc) from None

    def _ensure_secret(self, env: Environment, key: str, value: str) -> str:
        """The Swarm secret of `value`, created when missing. Names made under an earlier key
        (or an earlier scheme) differ: the deploy then rolls the service onto the new secrets
        (start-first) and prunes the old ones, as for a changed value."""
        names_key = self.state.secret(SECRET_NAMES_KEY, nbytes=32).encode()
        name = secret_name(self.site.name, env.name, key, value, names_key)
        api = self.manager.api
        try:
            if not any(s["Spec"]["Name"] == name for s in api.secrets(filters={"name": name})):
                api.create_secret(
                    name,
                    value.encode(),
                    labels={
                        LABEL_SITE: self.site.name,
                        LABEL_ROLE: ROLE_APP,
                        LABEL_ENV: env.name,
                        LABEL_SECRET: key,
                    },
                )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # created by a concurrent run: same name, same value
                raise engine_error(
                    self.members[0].node.name, f"create secret {key} of {env.name}", exc
                ) from None
        except ENGINE_ERRORS as exc:
            raise engine_error(self.members[0].node.name, f"secret {key}", exc) from None
        return name

    def _prune_secrets(self, env: Environment, keep: set[str]) -> None:
        api = self.manager.api
        flt = {"label": [f"{LABEL_SITE}={self.site.name}", f"{LABEL_ENV}={env.name}"]}
        for secret in api.secrets(filters=flt):
            if secret["Spec"]["Name"] in keep:
                continue
            # still mounted by a task that is stopping: the next deploy or removal retries
            with contextlib.suppress(docker.errors.APIError):
                api.remove_secret(secret["ID"])

    def _service(self, name: str, in_swarm: bool = False) -> dict[str, Any] | None:
        """The service's inspection, None when missing; `in_swarm`: the engine is known to be
        in a swarm (one round trip instead of two)."""
        try:
            if (
                not in_swarm
                and (self.manager.info().get("Swarm") or {}).get("LocalNodeState") != "active"
            ):
                return None  # no swarm yet: no service either
            return dict(self.manager.api.inspect_service(name))
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as exc:
            raise engine_error(self.members[0].node.name, f"inspect service {name}", exc) from None

    def _services(self) -> builtins.list[dict[str, Any]]:
        flt = {"label": [f"{LABEL_SITE}={self.site.name}", f"{LABEL_ROLE}={ROLE_APP}"]}
        try:
            swarm = self.manager.info().get("Swarm") or {}
            if swarm.get("LocalNodeState") != "active":
                return []
            return list(self.manager.api.services(filters=flt))
        except ENGINE_ERRORS as exc:
            raise engine_error(self.members[0].node.name, "list services", exc) from None

    def _converge(self, spec: ServiceSpec) -> None:
        api = self.manager.api
        node = self.members[0].node.name
        current = self._service(spec.name)
        if (
            current is not None
            and (current["Spec"].get("Labels") or {}).get(LABEL_SPEC) == spec.spec_hash
        ):
            self.reporter.step(f"service {spec.name}: no changes")
            self._wait_running(spec)
            return
        action = "create with" if current is None else "rolling update to"
        self.reporter.step(f"service {spec.name}: {action} {spec.image}")
        kwargs = self._service_kwargs(spec)
        try:
            if current is None:
                api.create_service(**kwargs)
            else:
                api.update_service(
                    current["ID"], current["Version"]["Index"], fetch_current_spec=False, **kwargs
                )
        except docker.errors.APIError as exc:
            if current is None and exc.status_code == 409:
                return self._converge(spec)  # a concurrent run created it; update that one
            raise engine_error(node, f"deploy service {spec.name}", exc) from None
        except ENGINE_ERRORS as exc:
            raise engine_error(node, f"deploy service {spec.name}", exc) from None
        self._wait_running(spec)

    def _service_kwargs(self, spec: ServiceSpec) -> dict[str, Any]:
        secrets = []
        for mount in spec.secrets:
            found = [
                s
                for s in self.manager.api.secrets(filters={"name": mount.name})
                if s["Spec"]["Name"] == mount.name
            ]
            if not found:
                raise PlacementError(f"secret {mount.key} of {spec.env} vanished; run env up again")
            secrets.append(docker.types.SecretReference(found[0]["ID"], mount.name, mount.file))
        container = docker.types.ContainerSpec(
            image=spec.image,
            env=spec.env_list(),
            labels={LABEL_APPS_OF: spec.site, LABEL_ENV: spec.env},
            secrets=secrets,
            stop_grace_period=STOP_GRACE,
            init=True,
        )
        task = docker.types.TaskTemplate(
            container_spec=container,
            restart_policy=docker.types.RestartPolicy(condition="any", delay=2 * NS),
            placement=docker.types.Placement(constraints=list(spec.constraints))
            if spec.constraints
            else None,
            networks=[docker.types.NetworkAttachmentConfig(target=spec.network)],
            resources=docker.types.Resources(
                cpu_limit=int(spec.limits[0] * NS), mem_limit=spec.limits[1] << 20
            )
            if spec.limits
            else None,
        )
        return {
            "task_template": task,
            "name": spec.name,
            "labels": spec.labels,
            "mode": docker.types.ServiceMode("replicated", replicas=1),
            "update_config": docker.types.UpdateConfig(
                parallelism=1,
                order="start-first",
                failure_action="rollback",
                monitor=UPDATE_MONITOR,
            ),
            "rollback_config": docker.types.RollbackConfig(
                parallelism=1, order="start-first", failure_action="pause", monitor=UPDATE_MONITOR
            ),
            "endpoint_spec": docker.types.EndpointSpec(mode="dnsrr"),
        }

    def _wait_running(self, spec: ServiceSpec) -> None:
        """Until one task of the spec's image runs (healthy, if the image has a health check) and
        no task of another image is wanted; fails early when Swarm rolled the update back (the
        service's spec is then the previous one) or this deploy's tasks keep failing."""
        api = self.manager.api
        deadline = time.monotonic() + self.timeout
        last = "no task yet"
        while True:
            service = self._service(spec.name, in_swarm=True)
            if service is None:
                raise PlacementError(f"service {spec.name} vanished while deploying {spec.image}")
            update = service.get("UpdateStatus") or {}
            state = update.get("State")
            is_ours = (service["Spec"].get("Labels") or {}).get(LABEL_SPEC) == spec.spec_hash
            if not is_ours or state in ("paused", "rollback_paused"):
                raise PlacementError(
                    f"service {spec.name}: the update to {spec.image} failed and was rolled "
                    f"back ({state or 'replaced'}): {update.get('Message') or last}"
                )
            since = _docker_time(service.get("UpdatedAt", ""))
            tasks = api.tasks(filters={"service": spec.name})
            wanted = [t for t in tasks if t.get("DesiredState") == "running"]
            ours = [t for t in wanted if _task_image(t) == spec.image]
            failed = [
                t
                for t in tasks
                if _task_image(t) == spec.image
                and t["Status"].get("State") in ("failed", "rejected")
                and _docker_time(t.get("CreatedAt", "")) >= since
            ]
            if failed:
                newest = max(failed, key=lambda t: _docker_time(t["Status"].get("Timestamp", "")))
                last = newest["Status"].get("Err") or newest["Status"].get("Message") or last
                if "No such image" in last or len(failed) >= 3:
                    raise PlacementError(f"service {spec.name}: tasks of {spec.image} fail: {last}")
            running = [t for t in ours if t["Status"].get("State") == "running"]
            if running and len(ours) == len(wanted) and state in (None, "completed"):
                return
            if ours:
                last = f"task {ours[0]['Status'].get('State')}"
            if time.monotonic() >= deadline:
                raise PlacementError(
                    f"service {spec.name}: {spec.image} not running after {self.timeout:.0f} s "
                    f"({last})"
                )
            time.sleep(TASK_POLL)

    def _wait_tasks_gone(self, name: str) -> None:
        deadline = time.monotonic() + GONE_TIMEOUT
        flt = {"label": f"com.docker.swarm.service.name={name}"}
        for client in unique_clients(self.clients).values():
            while client.api.containers(all=True, filters=flt):
                if time.monotonic() >= deadline:
                    return  # containers still stopping; their secrets go with the next prune
                time.sleep(0.5)

    def _write_route(self, env: Environment, spec: ServiceSpec) -> None:
        key = route_key(self.registry.prefix, env.name)
        value = f"{spec.name}:{self.site.environments.app_port}"
        try:
            if self.registry.get(key) != value:
                self.registry.client.write(key, value)
        except etcd.EtcdException as exc:
            raise PlacementError(f"etcd {self.registry.url}: cannot write {key}: {exc}") from None

    def _delete_route(self, env: Environment) -> None:
        key = route_key(self.registry.prefix, env.name)
        try:
            self.registry.client.delete(key)
        except etcd.EtcdKeyNotFound:
            pass
        except etcd.EtcdException as exc:
            raise PlacementError(f"etcd {self.registry.url}: cannot delete {key}: {exc}") from None


def _task_image(task: Mapping[str, Any]) -> str:
    return str(task["Spec"]["ContainerSpec"]["Image"])


def _docker_time(text: str) -> dt.datetime:
    """Docker's RFC 3339 timestamps (nanoseconds, trailing zeros trimmed) as UTC datetimes;
    the epoch when absent."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    try:
        parsed = dt.datetime.fromisoformat(whole[:19]).replace(tzinfo=dt.UTC)
    except ValueError:
        return dt.datetime.fromtimestamp(0, dt.UTC)
    digits = "".join(c for c in fraction if c.isdigit())[:6]
    return parsed.replace(microsecond=int(digits.ljust(6, "0")) if digits else 0)


def _iso(docker_time: str) -> str:
    """Docker's timestamps as ISO 8601 seconds (UTC); "" when absent."""
    if not docker_time:
        return ""
    return _docker_time(docker_time).isoformat(timespec="seconds")
