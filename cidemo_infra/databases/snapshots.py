"""Snapshots of staging's database as images: what a preview's database branches from.

A snapshot is taken without blocking staging's writes: `mariadb-dump --single-transaction` of
staging's database alone, through the proxy, into a throwaway MariaDB (the "builder": a container
of the Galera image with Galera off) whose datadir is in the container's own filesystem, not a
volume. The builder shuts down cleanly (slow shutdown: purged, redo log of 4 MiB), and `docker
commit` makes it an image `cidemo-snapshot/<site>-<env>:<kind>-<taken>`; the kinds of one refresh
come from one dump, one commit each. The image carries the snapshot between engines; on each
host its files are copied once into the branch store (`placement/branch_store.py`), and a
preview's database (`branches.py`) is a container of that image whose datadir is a reflink copy
of them there: its writes are its own, the snapshot's blocks stay shared.

An engine that lacks a snapshot gets it from the site registry when the site has one (`Route`:
pushed once, pulled where needed, only the layers an engine lacks), else by save/load through
the engines' APIs. The registry keeps the current snapshot of each kind (`forget`, then its
garbage collection).

Kinds: `full` (staging's rows, for the repository's own pull requests), `schema` (staging's
tables with no rows), `seed` (`schema`, then the site's `fork_script`) and `anonymised`
(`full`, then `fork_script`): the last three are for forks, chosen by `environments.fork_data`.
What a snapshot never holds: another database, the cluster's users or password hashes (the
builder is a fresh datadir; DEFINER clauses are dropped from the dump), the root password the
dump ran with (a file in the builder, removed before the commit).

The root password reaches the builder as a `[client]` file copied in through the Docker API, never
in argv, env or labels. Images are labelled (see `LABEL_*`) and found by label; the newest of a
kind is the current one. Older ones are removed once no container uses them (`gc`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import secrets
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from cidemo_infra import image_registry, images
from cidemo_infra.databases.database import DatabaseError, validate_database_name
from cidemo_infra.engines import ENGINE_ERRORS
from cidemo_infra.placement import branch_store
from cidemo_infra.placement.specs import LABEL_ROLE, LABEL_SITE
from cidemo_infra.placement.teardown import LABEL_APPS_OF

REPOSITORY = "cidemo-snapshot"
KINDS = ("full", "schema", "seed", "anonymised")
FORK_KINDS = {"schema": "schema", "seed": "seed", "anonymised": "anonymised"}
ROLE_SNAPSHOT = "snapshot"
ROLE_BUILDER = "snapshot-builder"
LABEL_KIND = "io.cidemo.snapshot.kind"
LABEL_SOURCE = "io.cidemo.snapshot.source"  # the database it was taken of
LABEL_ENV = "io.cidemo.snapshot.env"  # the environment whose database that is
LABEL_TAKEN = "io.cidemo.snapshot.taken"  # UTC, 20261202T031500.123456Z: sorts by time
DATADIR = "/var/lib/cidemo/branch"  # the snapshot's files in its image (the builder's datadir)
SNAPSHOT_MOUNT = "/var/lib/cidemo/snapshot"  # a branch's view of its snapshot in the store
LIVE_DATADIR = "/var/lib/cidemo/live"  # a branch's own datadir: its reflink copy in the store
BRANCHED = ".cidemo-branched"  # in LIVE_DATADIR once the copy is complete
START = "/usr/local/bin/cidemo-branch-start"
INIT_DIR = "/etc/cidemo-branch"
INIT_FILE = f"{INIT_DIR}/init.sql"
CLIENT_CNF = "/root/.cidemo-snapshot.cnf"
SCRIPT_FILE = "/root/cidemo-fork.sql"
# The member image declares VOLUME /var/lib/mysql; a tiny tmpfs there keeps Docker from making
# an anonymous volume for every builder and branch (their datadir is DATADIR, in the layer).
NO_VOLUME = {"/var/lib/mysql": "size=64k"}
NO_HEALTHCHECK = {"test": ["NONE"]}
READY_TIMEOUT = 120.0
DUMP_ATTEMPTS = 3

# Small files for the branches' startup: a 4 MiB redo log and a system tablespace grown 1 MiB at
# a time, since the first open for writing copies a file into the container's upper layer whole.
BRANCH_CNF = f"""# cidemo: a preview's database (a branch of a snapshot), not a Galera member
[mysqld]
datadir                        = {DATADIR}
bind-address                   = 0.0.0.0
innodb_buffer_pool_size        = 64M
innodb_log_file_size           = 4M
innodb_log_buffer_size         = 1M
innodb_autoextend_increment    = 1
innodb_data_file_path          = ibdata1:4M:autoextend
innodb_temp_data_file_path     = ibtmp1:1M:autoextend
innodb_doublewrite             = 0
innodb_flush_log_at_trx_commit = 2
innodb_buffer_pool_dump_at_shutdown = 0
innodb_buffer_pool_load_at_startup  = 0
skip-log-bin
max_connections                = 50
performance_schema             = OFF

[galera]
wsrep_on                       = OFF
wsrep_provider                 = none
"""

# The branch's start. The first time: its files, a reflink copy of the snapshot's in the host's
# branch store (`placement/branch_store.py`), which gets them from this image's layer when no
# branch of it started on this host before (`--prepare` does only that, for the tool). Root only
# until mariadbd starts. The init file (the app user) is put in by the tool before the first
# start; mariadbd reads it through a pipe, and the file is removed as soon as it has been read.
START_SCRIPT = f"""#!/bin/sh
set -eu
snap={SNAPSHOT_MOUNT}
live={LIVE_DATADIR}
prepare() {{
  [ -f "$snap/.ready" ] && return 0
  exec 9>"$snap/.lock"
  flock 9
  if [ ! -f "$snap/.ready" ]; then
    rm -rf "$snap/data" "$snap/data.tmp" "$snap/.reflink-probe"
    cp -R --preserve=mode,timestamps {DATADIR} "$snap/data.tmp"
    if ! cp --reflink=always "$snap/data.tmp/ibdata1" "$snap/.reflink-probe" 2>/dev/null; then
      rm -rf "$snap/data.tmp" "$snap/.reflink-probe"
      echo "cidemo: no reflinks in the branch store {branch_store.STORE} on this host" \\
        "(XFS or btrfs: cidemo-branch-store.service)" >&2
      exit {branch_store.EXIT_NO_REFLINKS}
    fi
    rm -f "$snap/.reflink-probe"
    mv "$snap/data.tmp" "$snap/data"
    touch "$snap/.ready"
  fi
  exec 9>&-
}}
if [ "${{1:-}}" = --prepare ]; then
  prepare
  exit 0
fi
install -d -o mysql -g mysql -m 0755 /run/mysqld
if [ ! -f "$live/{BRANCHED}" ]; then
  prepare
  find "$live" -mindepth 1 -delete
  cp -a "$snap/data/." "$live/"
  chown -R mysql:mysql "$live"
  chmod 0750 "$live"
  touch "$live/{BRANCHED}"
fi
if [ -f {INIT_FILE} ]; then
  fifo=/run/mysqld/init.sql
  rm -f "$fifo"
  mkfifo -m 0600 "$fifo"
  chown mysql:mysql "$fifo"
  (cat {INIT_FILE} >"$fifo" && rm -f {INIT_FILE} "$fifo") &
  set -- "--init-file=$fifo" "$@"
fi
exec mariadbd --user=mysql --datadir="$live" "$@"
"""


@dataclass(frozen=True)
class Snapshot:
    ref: str  # cidemo-snapshot/<site>-<env>:<kind>-<taken>
    image_id: str
    kind: str
    source: str
    taken: str

    @property
    def short(self) -> str:
        """The tag alone (`full-20261202T031500.123456Z`), as `env list` shows it."""
        return self.ref.rsplit(":", 1)[1]


def kind_for(is_fork: bool, fork_data: str) -> str:
    return FORK_KINDS[fork_data] if is_fork else "full"


def repository(site: str, env: str) -> str:
    return f"{REPOSITORY}/{site.lower()}-{env}"


def labels_for(site: str, env: str, source: str, kind: str, taken: str) -> dict[str, str]:
    return {
        LABEL_SITE: site,
        LABEL_ROLE: ROLE_SNAPSHOT,
        LABEL_KIND: kind,
        LABEL_SOURCE: source,
        LABEL_ENV: env,
        LABEL_TAKEN: taken,
    }


def taken_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def snapshots(client: docker.DockerClient, site: str, kind: str | None = None) -> list[Snapshot]:
    """The site's snapshots on one engine, newest first."""
    flt = [f"{LABEL_SITE}={site}", f"{LABEL_ROLE}={ROLE_SNAPSHOT}"]
    if kind:
        flt.append(f"{LABEL_KIND}={kind}")
    found = []
    for image in client.api.images(filters={"label": flt}):
        labels = image.get("Labels") or {}
        refs = [t for t in image.get("RepoTags") or [] if t.startswith(f"{REPOSITORY}/")]
        for ref in refs:
            found.append(
                Snapshot(
                    ref,
                    str(image["Id"]),
                    labels.get(LABEL_KIND, ""),
                    labels.get(LABEL_SOURCE, ""),
                    labels.get(LABEL_TAKEN, ""),
                )
            )
    return sorted(found, key=lambda s: s.taken, reverse=True)


def current(client: docker.DockerClient, site: str, kind: str) -> Snapshot | None:
    found = snapshots(client, site, kind)
    return found[0] if found else None


def _tar(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def client_cnf(host: str, port: int, password: str) -> str:
    """A `[client]` option file; values quoted the way MariaDB's option files unquote them."""
    quoted = '"' + password.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"[client]\nhost={host}\nport={int(port)}\nuser=root\npassword={quoted}\n"


@dataclass(frozen=True)
class Source:
    """Where the builder reaches staging's database: the proxy's read-write port."""

    host: str
    port: int
    password: str
    network: str | None  # a network to attach the builder to (local: the site network)


def _exec(container: Any, cmd: Sequence[str], what: str) -> str:
    result = container.exec_run(list(cmd), demux=True)
    out, err = result.output if isinstance(result.output, tuple) else (result.output, b"")
    if result.exit_code != 0:
        detail = (err or out or b"").decode(errors="replace").strip().splitlines()
        raise DatabaseError(
            f"snapshot builder: {what} failed (exit {result.exit_code}): "
            f"{detail[-1] if detail else 'no output'}"
        )
    return (out or b"").decode(errors="replace")


def _wait_for_server(container: Any, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.exec_run(["mariadb-admin", "--no-defaults", "ping"]).exit_code == 0:
            return
        time.sleep(0.2)
    raise DatabaseError(f"snapshot builder: MariaDB did not start within {timeout:.0f} s")


def _stop_server(container: Any, timeout: float = READY_TIMEOUT) -> None:
    """A slow, clean shutdown: nothing left to purge or recover when a branch starts."""
    _exec(container, ["mariadb", "-e", "SET GLOBAL innodb_fast_shutdown = 0"], "set slow shutdown")
    _exec(container, ["mariadb-admin", "shutdown"], "shutdown")
    deadline = time.monotonic() + timeout
    while container.exec_run(["pidof", "mariadbd"]).exit_code == 0:
        if time.monotonic() >= deadline:
            raise DatabaseError("snapshot builder: MariaDB did not stop")
        time.sleep(0.2)


@contextlib.contextmanager
def _builder(
    client: docker.DockerClient, image: str, site: str, network: str | None
) -> Iterator[Any]:
    name = f"cidemo-{site}-snapshot-builder-{secrets.token_hex(4)}"
    try:
        box = client.containers.create(
            image,
            name=name,
            entrypoint=["sleep", "infinity"],
            command=[],
            labels={LABEL_APPS_OF: site, LABEL_ROLE: ROLE_BUILDER},
            tmpfs=NO_VOLUME,
            healthcheck=NO_HEALTHCHECK,
            network=network,
            init=True,
        )
    except ENGINE_ERRORS as exc:
        raise DatabaseError(f"snapshot builder: cannot create it from {image}: {exc}") from None
    try:
        box.put_archive(
            "/",
            _tar(
                {
                    "etc/mysql/mariadb.conf.d/90-cidemo-branch.cnf": (BRANCH_CNF.encode(), 0o644),
                    START.lstrip("/"): (START_SCRIPT.encode(), 0o755),
                }
            ),
        )
        box.start()
        yield box
    finally:
        with contextlib.suppress(docker.errors.APIError):
            box.remove(force=True, v=True)


def take(
    client: docker.DockerClient,
    *,
    image: str,
    site: str,
    env: str,
    database: str,
    kinds: Sequence[str],
    source: Source,
    script: str | None = None,
    database_exists: bool = True,
) -> list[Snapshot]:
    """Snapshots of `database` of each of `kinds`, all from one dump, built on `client`'s engine.
    Staging's writes are never blocked: the dump is one consistent InnoDB read. A missing
    staging database gives an empty one of that name (a site with no staging data yet)."""
    validate_database_name(database)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"snapshot kinds {list(kinds)!r}; valid: {', '.join(KINDS)}")
    if {"seed", "anonymised"} & set(kinds) and not script:
        raise DatabaseError("a seed or anonymised snapshot needs environments.fork_script")
    # rows first (full, then anonymised rewrites them), then without rows (schema, then seed)
    order = [k for k in ("full", "anonymised", "schema", "seed") if k in kinds]
    with_rows = bool({"full", "anonymised"} & set(kinds))
    taken = taken_now()
    made: list[Snapshot] = []
    with _builder(client, image, site, source.network) as box:
        _exec(
            box,
            [
                "sh",
                "-c",
                f"install -d -o mysql -g mysql -m 0755 {DATADIR} /run/mysqld && "
                f"install -d -m 0755 {INIT_DIR} && "
                f"mariadb-install-db --user=mysql --datadir={DATADIR} --skip-test-db "
                "--auth-root-authentication-method=socket >/dev/null",
            ],
            "mariadb-install-db",
        )
        # the load runs with a bigger pool and redo log than a branch gets
        _start_server(box, "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=64M")
        _load(box, database, source, with_rows, database_exists)
        # then the branches' own settings: the redo log shrinks to 4 MiB before any commit
        _stop_server(box)
        _start_server(box)
        rows_gone = not with_rows
        for kind in order:
            if kind in ("schema", "seed") and not rows_gone:
                _truncate_all(box, database)
                rows_gone = True
            if kind in ("seed", "anonymised"):
                _run_script(box, database, script or "")
            _stop_server(box)
            made.append(_commit(box, site, env, database, kind, taken))
            if kind != order[-1]:
                _start_server(box)
    for snap in made:
        prepare(client, site, snap)
    return made


def prepare(client: docker.DockerClient, site: str, snap: Snapshot) -> None:
    """The snapshot's files into the branch store of `client`'s host (once: a no-op when there);
    fails when the store has no reflinks."""
    branch_store.run(
        client,
        snap.ref,
        [START, "--prepare"],
        f"prepare {snap.ref}",
        site=site,
        binds={branch_store.snapshot_dir(site, snap.short): SNAPSHOT_MOUNT},
    )


def _start_server(box: Any, *options: str) -> None:
    box.exec_run(["mariadbd", "--user=mysql", "--skip-networking", *options], detach=True)
    _wait_for_server(box)


def _commit(box: Any, site: str, env: str, database: str, kind: str, taken: str) -> Snapshot:
    if box.exec_run(["test", "-e", CLIENT_CNF]).exit_code == 0:
        raise DatabaseError("snapshot builder: the client file is still there; not committing")
    labels = labels_for(site, env, database, kind, taken)
    repo, tag = repository(site, env), f"{kind}-{taken}"
    changes = [f'ENTRYPOINT ["{START}"]', "CMD []", "USER root"]
    changes += [f'LABEL {k}="{v}"' for k, v in labels.items()]
    try:
        committed = box.commit(repository=repo, tag=tag, changes=changes)
    except ENGINE_ERRORS as exc:
        raise DatabaseError(f"snapshot: docker commit failed: {exc}") from None
    return Snapshot(f"{repo}:{tag}", str(committed.id), kind, database, taken)


def _load(box: Any, database: str, source: Source, with_rows: bool, exists: bool) -> None:
    cnf = client_cnf(source.host, source.port, source.password).encode()
    box.put_archive("/", _tar({CLIENT_CNF.lstrip("/"): (cnf, 0o600)}))
    try:
        for attempt in range(DUMP_ATTEMPTS):
            try:
                _dump(box, database, with_rows, exists)
                return
            except DatabaseError:
                if attempt == DUMP_ATTEMPTS - 1:
                    raise
                time.sleep(3)  # the proxy between two registrations of its members: again
    finally:
        box.exec_run(["rm", "-f", CLIENT_CNF])


def _dump(box: Any, database: str, with_rows: bool, exists: bool) -> None:
    _exec(
        box,
        [
            "mariadb",
            "-e",
            f"DROP DATABASE IF EXISTS `{database}`; "
            f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4",
        ],
        "create the database",
    )
    if not exists:
        return
    no_data = "" if with_rows else " --no-data"
    # one consistent read of staging (no locks), its definers dropped: a cluster account
    # means nothing in a branch, and no user name leaves the cluster
    _exec(
        box,
        [
            "bash",
            "-c",
            "set -o pipefail; "
            f"mariadb-dump --defaults-extra-file={CLIENT_CNF} --single-transaction "
            f"--quick --skip-lock-tables --routines --triggers --events --hex-blob"
            f"{no_data} {database} | sed -E 's/ DEFINER=`[^`]*`@`[^`]*`//g' "
            f"| mariadb --binary-mode {database}",
        ],
        f"dump of {database} into the builder",
    )


def _truncate_all(box: Any, database: str) -> None:
    listed = _exec(
        box,
        [
            "mariadb",
            "-N",
            "-B",
            "-e",
            "SELECT CONCAT('TRUNCATE TABLE `', REPLACE(TABLE_NAME, '`', '``'), '`;') "
            f"FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{database}' "
            "AND TABLE_TYPE = 'BASE TABLE'",
        ],
        "list the tables",
    )
    if listed.strip():
        statements = "SET FOREIGN_KEY_CHECKS = 0;\n" + listed
        _exec(box, ["mariadb", database, "-e", statements], "empty the tables")


def _run_script(box: Any, database: str, script: str) -> None:
    box.put_archive("/", _tar({SCRIPT_FILE.lstrip("/"): (script.encode(), 0o600)}))
    try:
        _exec(
            box,
            ["bash", "-c", f"mariadb --binary-mode {database} < {SCRIPT_FILE}"],
            "environments.fork_script",
        )
    finally:
        box.exec_run(["rm", "-f", SCRIPT_FILE])


@dataclass(frozen=True)
class Route:
    """The site registry, for a site that has one: snapshots travel between engines through it
    as `<address>/cidemo-snapshot/<site>-<env>:<kind>-<taken>` (so an engine fetches only the
    layers it lacks: the snapshot's own, not the member image's under it)."""

    address: str
    auth: Mapping[str, str]

    def ref(self, ref: str) -> str:
        return f"{self.address}/{ref}"


def ship(
    source: docker.DockerClient,
    targets: Mapping[str, docker.DockerClient],
    ref: str,
    route: Route | None = None,
) -> list[str]:
    """Copy the image `ref` to the engines that lack it: pushed once to the site registry and
    pulled from there when the site has one (`route`), else save/load through the engines' APIs.
    Returns the engines it was copied to."""
    missing = {name: client for name, client in targets.items() if not images.has(client, ref)}
    if missing and route is not None:
        _push(source, ref, route)
    for name, client in missing.items():
        try:
            if route is None:
                client.images.load(source.images.get(ref).save(named=True))
            else:
                _pull(client, ref, route)
        except ENGINE_ERRORS as exc:
            via = f"from {route.address}" if route else "by save/load"
            raise DatabaseError(f"engine {name}: cannot get snapshot {ref} {via}: {exc}") from None
    return list(missing)


def _stream_errors(chunks: Iterator[Mapping[str, Any]]) -> str | None:
    for chunk in chunks:
        if "error" in chunk:
            return str(chunk["error"])
    return None


def _push(source: docker.DockerClient, ref: str, route: Route) -> None:
    """The registry's name stays on the image (gc removes it with the image): two runs shipping
    one snapshot at once must not untag it under each other's push."""
    repo, tag = route.ref(ref).rsplit(":", 1)
    try:
        source.api.tag(ref, repo, tag)
        pushed = source.api.push(
            repo, tag=tag, auth_config=dict(route.auth), stream=True, decode=True
        )
        error = _stream_errors(pushed)
    except ENGINE_ERRORS as exc:
        error = str(exc)
    if error:
        raise DatabaseError(
            f"cannot push snapshot {ref} to the site registry {route.address}: {error}"
        )


def _pull(client: docker.DockerClient, ref: str, route: Route) -> None:
    remote = route.ref(ref)
    repo, tag = remote.rsplit(":", 1)
    pulled = client.api.pull(repo, tag=tag, auth_config=dict(route.auth), stream=True, decode=True)
    error = _stream_errors(pulled)
    if error:
        raise docker.errors.APIError(error)
    local_repo, local_tag = ref.rsplit(":", 1)
    client.api.tag(remote, local_repo, local_tag)


def forget(
    client: docker.DockerClient, registry: str, site: str, env: str, keep: Sequence[str]
) -> list[str]:
    """Delete from the site registry (container `registry` on `client`'s engine) the site's
    snapshots of `env` but the tags `keep`; returns the tags deleted. Their blobs stay until
    `image_registry.collect_garbage`."""
    repo = repository(site, env)
    doomed = [t for t in image_registry.tags(client, registry, repo) if t not in keep]
    return image_registry.delete_tags(client, registry, repo, doomed)


def newest(client: docker.DockerClient, site: str) -> list[Snapshot]:
    """The current snapshot of each kind on one engine."""
    found: dict[str, Snapshot] = {}
    for snap in snapshots(client, site):  # newest first
        found.setdefault(snap.kind, snap)
    return list(found.values())


def gc(client: docker.DockerClient, site: str, keep: Sequence[str] = ()) -> list[str]:
    """Remove the site's snapshots on one engine, image and store files, but the newest of each
    kind and `keep`, unless a container (a preview's database) still uses one; returns the refs
    removed. (A branch does not need its snapshot's files once it has started: its copy shares
    their blocks, and removing the snapshot's leaves them to the branch.)"""
    newest: set[str] = set()
    removed: list[Snapshot] = []
    kept = ""
    for snap in snapshots(client, site):
        if snap.kind not in newest:
            newest.add(snap.kind)
            kept = kept or snap.ref
            continue
        if snap.ref in keep:
            continue
        if client.api.containers(all=True, filters={"ancestor": snap.image_id}):
            continue
        try:
            for tag in _names_of(client, snap):
                client.api.remove_image(tag)
        except docker.errors.APIError:
            continue  # used by a container created meanwhile: the next gc removes it
        removed.append(snap)
    if removed and kept:
        branch_store.remove_snapshots(client, kept, site, [s.short for s in removed])
    return [s.ref for s in removed]


def _names_of(client: docker.DockerClient, snap: Snapshot) -> list[str]:
    """The snapshot's tags on one engine: its own, and the site registry's name for it where
    it was pushed or pulled. The image goes with the last one removed: its own, so that an image a
    container took meanwhile keeps the name the next gc finds it by."""
    try:
        tags = client.api.inspect_image(snap.image_id).get("RepoTags") or []
    except docker.errors.NotFound:
        return []
    return [t for t in tags if t.endswith(f"/{snap.ref}")] + [snap.ref]  # its own the last
