"""A preview's database: its own MariaDB container, a branch of a snapshot.

The container runs the snapshot's image; its datadir is a directory of its own in the host's
branch store (`placement/branch_store.py`), bind-mounted. At its first start the image's start
script fills it with a reflink copy of the snapshot's files there: a few milliseconds whatever
the size, since the copy shares the snapshot's blocks and a block is copied only when the branch
writes it. So a branch costs its server's start, and its disk is what it writes. `remove` takes
the container and its directory; it has no volume.

The app's user is made at the first start from an init file put into the created container
before it starts (never an env variable, label or argument); the server reads it through a pipe
and the file is removed once read. The user holds privileges on the branch's database only, on
this server only: previews have no account on the Galera cluster.

Containers are named `cidemo-<site>-db-<env>` and labelled `io.cidemo.apps-of=<site>`,
`io.cidemo.role=preview-db`, `io.cidemo.env=<env>`, `io.cidemo.snapshot=<image ref>`.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from cidemo_infra.databases.database import (
    DatabaseError,
    grant_database,
    validate_database_name,
    validate_user_name,
)
from cidemo_infra.databases.snapshots import (
    INIT_DIR,
    INIT_FILE,
    LIVE_DATADIR,
    NO_VOLUME,
    SNAPSHOT_MOUNT,
    Snapshot,
)
from cidemo_infra.engines import ENGINE_ERRORS
from cidemo_infra.placement import branch_store
from cidemo_infra.placement.specs import LABEL_ROLE
from cidemo_infra.placement.teardown import LABEL_APPS_OF

ROLE_BRANCH = "preview-db"
LABEL_ENV = "io.cidemo.env"
LABEL_SNAPSHOT = "io.cidemo.snapshot"
PORT = 3306
READY_TIMEOUT = 120.0
PIDS_LIMIT = 512


@dataclass(frozen=True)
class Placement:
    """Where a preview's database runs, chosen by the app platform."""

    engine: str  # the engine's key among the session's clients
    node: str
    network: str | None  # attached to it; the apps reach the container by its name there
    publish_on: str | None = None  # else: a host address where 3306 is published for the apps


@dataclass(frozen=True)
class Limits:
    cpus: float
    memory_mb: int

    def host_config(self) -> dict[str, Any]:
        memory = f"{int(self.memory_mb)}m"
        return {
            "nano_cpus": int(self.cpus * 1_000_000_000),
            "mem_limit": memory,
            "memswap_limit": memory,  # no swap: a preview over its limit is killed, not slowed
            "pids_limit": PIDS_LIMIT,
        }

    @property
    def buffer_pool_mb(self) -> int:
        return max(8, int(self.memory_mb) // 4)


@dataclass(frozen=True)
class Branch:
    container: str
    engine: str
    snapshot: str
    host: str  # where the apps reach it
    port: int


def container_name(site: str, env: str) -> str:
    return f"cidemo-{site}-db-{env}"


def sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def init_sql(database: str, user: str, password: str) -> str:
    """The app user, on the branch's server only, granted on its database only."""
    validate_database_name(database)
    validate_user_name(user)
    if not password:
        raise DatabaseError(f"an empty password for user {user} is refused")
    account = f"'{user}'@'%'"
    return (
        f"CREATE OR REPLACE USER {account} IDENTIFIED BY {sql_string(password)};\n"
        f"GRANT ALL PRIVILEGES ON {grant_database(database)}.* TO {account};\n"
    )


def _tar(name: str, data: bytes, mode: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def labels(site: str, env: str, snapshot: str) -> dict[str, str]:
    return {
        LABEL_APPS_OF: site,
        LABEL_ROLE: ROLE_BRANCH,
        LABEL_ENV: env,
        LABEL_SNAPSHOT: snapshot,
    }


def create(
    client: docker.DockerClient,
    placement: Placement,
    *,
    site: str,
    env: str,
    snapshot: Snapshot,
    database: str,
    user: str,
    password: str,
    limits: Limits,
    timeout: float = READY_TIMEOUT,
) -> Branch:
    """Start the branch of `snapshot` for `env` and wait until `user` exists on it; returns
    where the apps reach it. On failure the container is removed again."""
    name = container_name(site, env)
    init = init_sql(database, user, password).encode()
    api = client.api
    host_config = api.create_host_config(
        restart_policy={"Name": "unless-stopped"},
        binds={
            branch_store.snapshot_dir(site, snapshot.short): {"bind": SNAPSHOT_MOUNT, "mode": "rw"},
            branch_store.branch_dir(site, env): {"bind": LIVE_DATADIR, "mode": "rw"},
        },
        tmpfs=NO_VOLUME,
        init=True,
        port_bindings={f"{PORT}/tcp": (placement.publish_on, None)}
        if placement.publish_on
        else None,
        **limits.host_config(),
    )
    networking = None
    if placement.network:
        networking = api.create_networking_config(
            {placement.network: api.create_endpoint_config(aliases=[name])}
        )
    try:
        created = api.create_container(
            snapshot.ref,
            name=name,
            hostname=name[:63],
            command=[f"--innodb-buffer-pool-size={limits.buffer_pool_mb}M"],
            labels=labels(site, env, snapshot.ref),
            host_config=host_config,
            networking_config=networking,
            ports=[PORT] if placement.publish_on else None,
            detach=True,
        )
    except ENGINE_ERRORS as exc:
        raise DatabaseError(
            f"node {placement.node}: cannot create {name} from {snapshot.ref}: {exc}"
        ) from None
    try:
        api.put_archive(created["Id"], INIT_DIR, _tar(INIT_FILE.rsplit("/", 1)[1], init, 0o600))
        api.start(created["Id"])
        container = client.containers.get(created["Id"])
        wait_ready(container, timeout)
        return _branch(client, placement, container.attrs | {"Id": created["Id"]}, name)
    except BaseException:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(created["Id"], force=True, v=True)
        with contextlib.suppress(branch_store.StoreError):
            branch_store.remove_branch(client, snapshot.ref, site, env)
        raise


def _branch(
    client: docker.DockerClient, placement: Placement, attrs: Mapping[str, Any], name: str
) -> Branch:
    info = client.api.inspect_container(attrs["Id"])
    snapshot = (info["Config"].get("Labels") or {}).get(LABEL_SNAPSHOT, "")
    if placement.publish_on:
        bound = (info["NetworkSettings"]["Ports"] or {}).get(f"{PORT}/tcp") or []
        if not bound:
            raise DatabaseError(f"{name}: port {PORT} is not published")
        return Branch(
            name, placement.engine, snapshot, placement.publish_on, int(bound[0]["HostPort"])
        )
    return Branch(name, placement.engine, snapshot, name, PORT)


READY_LINE = b"ready for connections"  # mariadbd logs it after running its init file


def wait_ready(container: Any, timeout: float = READY_TIMEOUT) -> None:
    """Until the server is ready. Its log says so after it ran the init file (an error there
    stops it: the container exits). The log is polled, not `exec`: ten branches starting at
    once each spawning a client every 50 ms would slow the machine they wait for."""
    deadline = time.monotonic() + timeout
    api = container.client.api
    while True:
        if READY_LINE in api.logs(container.id, stdout=True, stderr=True, tail=50):
            return
        state = api.inspect_container(container.id)["State"]
        if state["Status"] in ("exited", "dead") or time.monotonic() >= deadline:
            tail = container.logs(tail=5).decode(errors="replace").strip().splitlines()
            raise DatabaseError(
                f"{container.name}: not ready ({state['Status']}): {tail[-1] if tail else 'no log'}"
            )
        time.sleep(0.05)


def find(
    clients: Mapping[str, docker.DockerClient], site: str, env: str
) -> tuple[str, dict[str, Any]] | None:
    """(engine, container inspect) of `env`'s branch, or None."""
    flt = {
        "label": [f"{LABEL_APPS_OF}={site}", f"{LABEL_ROLE}={ROLE_BRANCH}", f"{LABEL_ENV}={env}"]
    }
    for engine, client in clients.items():
        for found in client.api.containers(all=True, filters=flt):
            return engine, dict(client.api.inspect_container(found["Id"]))
    return None


def address(placement: Placement, info: Mapping[str, Any]) -> tuple[str, int]:
    """Where the apps reach an existing branch."""
    name = str(info["Name"]).lstrip("/")
    if placement.publish_on:
        bound = (info["NetworkSettings"]["Ports"] or {}).get(f"{PORT}/tcp") or []
        if bound:
            return placement.publish_on, int(bound[0]["HostPort"])
    return name, PORT


def list_all(clients: Mapping[str, docker.DockerClient], site: str) -> dict[str, dict[str, str]]:
    """env -> labels of every branch of the site."""
    flt = {"label": [f"{LABEL_APPS_OF}={site}", f"{LABEL_ROLE}={ROLE_BRANCH}"]}
    found: dict[str, dict[str, str]] = {}
    for client in clients.values():
        for container in client.api.containers(all=True, filters=flt):
            tags = container.get("Labels") or {}
            found[tags.get(LABEL_ENV, "")] = dict(tags)
    return found


def remove(clients: Mapping[str, docker.DockerClient], site: str, env: str) -> bool:
    """Remove `env`'s branch with its writes: the container, then its files in the branch store."""
    removed = False
    flt = {
        "label": [f"{LABEL_APPS_OF}={site}", f"{LABEL_ROLE}={ROLE_BRANCH}", f"{LABEL_ENV}={env}"]
    }
    for name, client in clients.items():
        try:
            for found in client.api.containers(all=True, filters=flt):
                client.api.remove_container(found["Id"], force=True, v=True)
                branch_store.remove_branch(client, str(found["Image"]), site, env)
                removed = True
        except docker.errors.NotFound:
            continue
        except ENGINE_ERRORS as exc:
            raise DatabaseError(
                f"engine {name}: cannot remove the database of {env}: {exc}"
            ) from None
        except branch_store.StoreError as exc:
            raise DatabaseError(f"engine {name}: the database of {env}: {exc}") from None
    return removed
