"""Environment actions: up, down, promote, gc, refresh-staging, list.

An environment is an app deployment (on the site's platform) plus its database on the Galera
cluster, reached as root through the proxy's read-write port. Every action is idempotent and runs
under the environment's lock (`locks.env_lock`); a new preview is counted against
`environments.max_previews` under a shared lock, so concurrent `env up`s cannot pass the limit.

Databases: staging's and production's are on the Galera cluster, named like the environment
with `-` -> `_`. A preview's is a branch: its own MariaDB container started from the current
snapshot of staging's database (`databases/snapshots.py`, `databases/branches.py`), made the first
time and kept on updates; it holds staging's database under staging's name, and its user
`pr_<n>` exists on that container only (no account on the cluster). A fork's preview branches
from the snapshot `environments.fork_data` names (schema only by default). Snapshots are taken on
`env up --staging`, after `refresh-staging` and by `env snapshot`, without blocking previews:
they branch from the previous snapshot until the new one is committed. Each environment's user
has a password generated into the state directory (`secrets/app-db-<env>`).
App secrets: files `secrets/app/<NAME>` in the state directory (e.g. `S3_ACCESS_KEY`), given to
staging, production and previews of the repository's own branches; previews of pull requests from
forks get their own database credentials and nothing else.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import etcd

from cidemo_infra import image_registry
from cidemo_infra.backups import backup
from cidemo_infra.backups.store import BackupStore, check_name, store_for
from cidemo_infra.console import Reporter
from cidemo_infra.databases import branches, capacity, database, snapshots
from cidemo_infra.envs import names, records
from cidemo_infra.envs.locks import (
    env_lock,
    previews_lock,
    registry_collect_lock,
    registry_push_lock,
    snapshot_lock,
)
from cidemo_infra.envs.names import Environment
from cidemo_infra.errors import CidemoError, LockError, UsageError
from cidemo_infra.lifecycle import SECRETS, Session, open_session
from cidemo_infra.pipeline.github import PullRequests
from cidemo_infra.placement import branch_store
from cidemo_infra.placement.specs import (
    LABEL_ROLE,
    PROXY_RW_PORT,
    container_name,
    has_router,
    network_name,
)
from cidemo_infra.placement.teardown import LABEL_APPS_OF
from cidemo_infra.platforms import platform_for
from cidemo_infra.platforms.platform import AppPlatform
from cidemo_infra.platforms.swarm import maintenance_key
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir

APP_SECRETS = "app"
APP_SECRET_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,62}$")
RESERVED_SETTINGS = ("URL", "DB_HOST", "DB_PORT", "DB_USER", "DB_NAME", "PORT")


@dataclass
class EnvContext:
    site: Site
    state: StateDir
    session: Session
    platform: AppPlatform
    reporter: Reporter
    lock_wait: float = 0.0

    @property
    def app(self) -> str:
        return self.site.environments.app


def require_environments(site: Site) -> None:
    """UsageError for a site without an `environments` section: no delivery pipeline to act on."""
    if "environments" not in site.model_fields_set:
        raise UsageError(
            f"site '{site.name}' has no environments section; add one (at least "
            "environments.app) and run cidemo provision, which places the app router"
        )


@contextlib.contextmanager
def open_envs(
    site: Site, state: StateDir, reporter: Reporter, lock_wait: float = 0.0
) -> Iterator[EnvContext]:
    """The site's environments; opening them writes nothing (the actions' locks create what
    they need)."""
    require_environments(site)
    state.check()
    session = open_session(site, state, reporter, build=False)
    try:
        platform = platform_for(site.environments.platform, session)
        yield EnvContext(site, state, session, platform, reporter, lock_wait)
    finally:
        session.close()


def database_of(env: Environment) -> str:
    if env.pr is not None:
        return database.preview_database(env.pr)
    return database.environment_database(env.name)


def staging_database(app: str) -> str:
    return database_of(names.staging(app))


def _password_name(env: Environment) -> str:
    return f"app-db-{env.name}"


def app_secrets(state: StateDir) -> dict[str, str]:
    folder = state.secrets_dir / APP_SECRETS
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.iterdir()):
        if not APP_SECRET_NAME.match(path.name):
            raise UsageError(
                f"{path}: app secret files are named like environment variables in capitals "
                "(e.g. S3_ACCESS_KEY)"
            )
        found[path.name] = path.read_text().strip()
    return found


def app_settings(
    site: Site,
    env: Environment,
    platform: AppPlatform,
    db: str,
    branch: tuple[str, int, str] | None = None,
) -> dict[str, str]:
    """The app's plain settings: `environments.app_env`, then what the platform decides;
    `branch`: a preview's database server (host, port) and the database it holds."""
    host, port = platform.database_address() if branch is None else branch[:2]
    settings = {"NODE_ENV": "production", **site.environments.app_env}
    settings.update(
        URL=platform.url_of(env),
        DB_HOST=host,
        DB_PORT=str(port),
        DB_USER=db,
        DB_NAME=db if branch is None else branch[2],
        PORT=str(site.environments.app_port),
    )
    return settings


def _root(ctx: EnvContext) -> Any:
    host, port = ctx.session.endpoint("rw")
    password = ctx.state.known_secret("root_password", SECRETS["root_password"])
    if password is None:
        raise UsageError(
            f"no database root password in {ctx.state.secrets_dir} (nor "
            f"{SECRETS['root_password']}): is this the state directory the site was provisioned "
            "with? (--state-dir, CIDEMO_STATE_DIR)"
        )
    return database.connect(host, port, "root", password, tls_ca=ctx.state.tls_dir / "ca.pem")


def previews(ctx: EnvContext) -> set[str]:
    """Names of the previews the tool knows of: reserved or recorded, or running."""
    found = {r.name for r in records.load_all(ctx.state) if r.kind == "preview"}
    for deployment in ctx.platform.list():
        with contextlib.suppress(UsageError):
            if names.parse(deployment.env, ctx.app).is_preview:
                found.add(deployment.env)
    return found


def up(
    ctx: EnvContext,
    env: Environment,
    ref: str,
    image: str,
    *,
    is_fork: bool = False,
    repo: str = "",
) -> str:
    """Create or update `env` to run `image` (built from commit `ref`); returns its URL.
    What can be known to fail (the platform, the image, the preview limit) is checked before
    anything is written."""
    names.validate_ref(ref)
    names.validate_image(image)
    check_up(ctx, env, image)
    with env_lock(ctx.state, env.name, ctx.lock_wait):
        url = _up_locked(ctx, env, ref, image, is_fork=is_fork, repo=repo)
    if env.kind == "staging":
        _refresh_after(ctx, f"{env.name} runs {image}")
    return url


def check_up(ctx: EnvContext, env: Environment, image: str) -> None:
    """Reads only: the platform can deploy `image`, and a new preview fits under the limit
    (counted again under the lock when it is reserved)."""
    ctx.platform.check_deploy(image)
    _root(ctx).close()  # the cluster answers, with the root password of this state directory
    if env.is_preview and records.load(ctx.state, env.name) is None:
        names.check_capacity(previews(ctx), env.name, ctx.site.environments.max_previews)


def _up_locked(
    ctx: EnvContext, env: Environment, ref: str, image: str, *, is_fork: bool, repo: str
) -> str:
    db = database_of(env)
    record = records.load(ctx.state, env.name)
    if env.pr is not None:
        records.clear_closed(ctx.state, env.pr)
        if record is None:
            with previews_lock(ctx.state):
                names.check_capacity(previews(ctx), env.name, ctx.site.environments.max_previews)
                record = _new_record(env, db)
                records.save(ctx.state, record)
    if record is None:
        record = _new_record(env, db)
    is_fork = is_fork or record.is_fork  # a fork's pull request never becomes trusted
    password = ctx.state.secret(_password_name(env))
    branch: tuple[str, int, str] | None = None
    snapshot = record.snapshot
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the platform's part meanwhile
        prepared = pool.submit(ctx.platform.prepare)
        if env.is_preview:
            host, port, snapshot = _ensure_branch(ctx, env, db, password, is_fork)
            branch = (host, port, staging_database(ctx.app))
        else:
            _ensure_database(ctx, env, db, password)
        prepared.result()
    secrets = {"DB_PASS": password} | ({} if is_fork else app_secrets(ctx.state))
    settings = app_settings(ctx.site, env, ctx.platform, db, branch)
    url = ctx.platform.deploy(env, image, settings, secrets)
    records.save(
        ctx.state,
        record.touched(
            image=image,
            ref=ref,
            url=url,
            is_fork=is_fork,
            repo=repo or record.repo,
            snapshot=snapshot,
            database=db if branch is None else branch[2],
        ),
    )
    ctx.reporter.step(f"{env.name}: runs {image} at {url}")
    return url


def _new_record(env: Environment, db: str) -> records.EnvRecord:
    now = records.now_utc()
    return records.EnvRecord(env.name, env.kind, env.pr, db, now, now)


def _ensure_database(ctx: EnvContext, env: Environment, db: str, password: str) -> None:
    """Staging's and production's database and user, on the cluster."""
    conn = _root(ctx)
    try:
        if not database.database_exists(conn, db):
            database.execute(
                conn,
                f"CREATE DATABASE IF NOT EXISTS {database.quote_ident(db)} CHARACTER SET utf8mb4",
            )
            ctx.reporter.step(f"{env.name}: created database {db} (empty)")
        database.ensure_app_user(conn, db, db, password)
    finally:
        conn.close()


def snapshot_kind(ctx: EnvContext, is_fork: bool) -> str:
    return snapshots.kind_for(is_fork, ctx.site.environments.fork_data)


def _builder(ctx: EnvContext) -> tuple[str, Any]:
    """The engine that builds snapshots: the standalone node's, beside the proxy."""
    node = ctx.session.inventory.of_role("standalone")[0]
    return node.engine, ctx.session.clients[node.engine]


def _snapshot_source(ctx: EnvContext) -> snapshots.Source:
    """The proxy's read-write port as a container on the standalone node reaches it."""
    password = ctx.state.known_secret("root_password", SECRETS["root_password"]) or ""
    if ctx.site.target == "local":
        host = container_name(ctx.site, "dbproxy")
        return snapshots.Source(host, PROXY_RW_PORT, password, network_name(ctx.site))
    standalone = ctx.session.inventory.of_role("standalone")[0]
    return snapshots.Source(str(standalone.private_ip), PROXY_RW_PORT, password, None)


def _fork_script(ctx: EnvContext, kinds: Sequence[str]) -> str | None:
    if not {"seed", "anonymised"} & set(kinds):
        return None
    path = Path(ctx.site.environments.fork_script or "")
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(f"environments.fork_script: cannot read {path}: {exc}") from None


def take_snapshots(ctx: EnvContext, kinds: Sequence[str]) -> list[snapshots.Snapshot]:
    """New snapshots of staging's database, one of each of `kinds` from one dump, on every
    engine previews run on; older unused ones are removed. Previews go on branching from the
    previous ones meanwhile (they wait only for a kind that has none yet)."""
    stage = names.staging(ctx.app)
    source_db = staging_database(ctx.app)
    script = _fork_script(ctx, kinds)
    placements = ctx.platform.branch_placements()
    started = time.monotonic()
    with contextlib.ExitStack() as held:
        for kind in sorted(set(kinds)):
            held.enter_context(snapshot_lock(ctx.state, kind))
        conn = _root(ctx)
        try:
            exists = database.database_exists(conn, source_db)
        finally:
            conn.close()
        engine, client = _builder(ctx)
        ctx.reporter.step(f"snapshot ({', '.join(kinds)}) of {source_db}: dumping it")
        made = snapshots.take(
            client,
            image=ctx.session.images["galera"],
            site=ctx.site.name,
            env=stage.name,
            database=source_db,
            kinds=kinds,
            source=_snapshot_source(ctx),
            script=script,
            database_exists=exists,
        )
        targets = {p.engine: ctx.session.clients[p.engine] for p in placements}
        targets.pop(engine, None)
        copied: set[str] = set()
        route = snapshot_route(ctx)
        for snap in made:
            shipped_to = _ship(ctx, client, targets, snap, route)
            for target in shipped_to:  # its files into that host's branch store now, not
                snapshots.prepare(targets[target], ctx.site.name, snap)  # at a first branch
            copied.update(shipped_to)
        for target in {engine: client, **targets}.values():
            snapshots.gc(target, ctx.site.name, keep=tuple(s.ref for s in made))
        if route is not None:
            _forget_in_registry(
                ctx, stage.name, [s.short for s in snapshots.newest(client, ctx.site.name)]
            )
    via = f" through {route.address}" if route and copied else ""
    shipped = f", copied to {', '.join(sorted(copied))}{via}" if copied else ""
    refs = ", ".join(s.ref for s in made)
    ctx.reporter.step(f"snapshot {refs} ({time.monotonic() - started:.1f} s{shipped})")
    return made


def snapshot_route(ctx: EnvContext) -> snapshots.Route | None:
    """The site registry, where the site has one: the way snapshots go between engines."""
    if not image_registry.is_placed(ctx.site):
        return None
    image_registry.trust(ctx.site, ctx.state, ctx.session.inventory)
    return snapshots.Route(
        image_registry.address(ctx.site, ctx.session.inventory),
        image_registry.auth_config(ctx.state),
    )


def _ship(
    ctx: EnvContext,
    source: docker.DockerClient,
    targets: dict[str, docker.DockerClient],
    snap: snapshots.Snapshot,
    route: snapshots.Route | None,
) -> list[str]:
    if route is None:
        return snapshots.ship(source, targets, snap.ref)
    with registry_push_lock(ctx.state):  # no garbage collection under a push
        return snapshots.ship(source, targets, snap.ref, route)


GARBAGE_PENDING = "registry-garbage"  # in the state directory: deleted, not yet collected


def _forget_in_registry(ctx: EnvContext, env: str, keep: Sequence[str]) -> None:
    """The registry keeps the current snapshot of each kind (`keep`): older ones are deleted,
    then its garbage is collected, unless a push is under way (the next refresh collects it).
    A failure here leaves the new snapshots in place; it is reported, not raised."""
    standalone = ctx.session.inventory.of_role("standalone")[0]
    client = ctx.session.clients[standalone.engine]
    name = image_registry.container(ctx.site)
    pending = ctx.state.path / GARBAGE_PENDING
    try:
        deleted = snapshots.forget(client, name, ctx.site.name, env, keep)
        if deleted:
            pending.touch()
            ctx.reporter.step(f"site registry: older snapshots deleted ({', '.join(deleted)})")
        if pending.exists():
            with registry_collect_lock(ctx.state):
                image_registry.collect_garbage(client, name)
            pending.unlink()
    except LockError:
        ctx.reporter.step("site registry: a push is under way; its garbage is collected later")
    except CidemoError as exc:
        ctx.reporter.step(f"site registry: older snapshots not deleted ({exc}); next refresh")


def take_snapshot(ctx: EnvContext, kind: str) -> snapshots.Snapshot:
    return take_snapshots(ctx, [kind])[0]


def snapshot_kinds(ctx: EnvContext) -> list[str]:
    """The kinds previews of this site branch from: staging's rows, and the forks' kind."""
    return list(dict.fromkeys(["full", snapshot_kind(ctx, True)]))


def refresh_snapshots(ctx: EnvContext) -> list[snapshots.Snapshot]:
    return take_snapshots(ctx, snapshot_kinds(ctx))


def _refresh_after(ctx: EnvContext, done: str) -> None:
    """New snapshots after staging changed; a failure says that the change itself is done."""
    try:
        refresh_snapshots(ctx)
    except CidemoError as exc:
        failed = database.DatabaseError(
            f"{done}, but its snapshot failed (previews keep branching from the previous one; "
            f"retry with cidemo env snapshot): {exc}"
        )
        failed.exit_code = exc.exit_code
        raise failed from exc


def _current_snapshot(ctx: EnvContext, kind: str) -> snapshots.Snapshot:
    _, client = _builder(ctx)
    found = snapshots.current(client, ctx.site.name, kind)
    if found is not None:
        return found
    with snapshot_lock(ctx.state, kind):  # another run may be taking the first one
        found = snapshots.current(client, ctx.site.name, kind)
    return found or take_snapshot(ctx, kind)


def _kind_of(snapshot_ref: str) -> str:
    return snapshot_ref.rsplit(":", 1)[-1].split("-", 1)[0]


def _ensure_branch(
    ctx: EnvContext, env: Environment, user: str, password: str, is_fork: bool
) -> tuple[str, int, str]:
    """The preview's database server, branched from the current snapshot the first time;
    (host, port) as the apps reach it, and the snapshot it branched from."""
    clients = ctx.session.clients
    kind = snapshot_kind(ctx, is_fork)
    placements = {p.engine: p for p in ctx.platform.branch_placements()}
    found = branches.find(clients, ctx.site.name, env.name)
    if found is not None:
        engine, info = found
        ref = (info["Config"].get("Labels") or {}).get(branches.LABEL_SNAPSHOT, "")
        if _kind_of(ref) == kind and engine in placements:
            host, port = branches.address(placements[engine], info)
            return host, port, ref
        # a preview that became a fork's (or whose node left the platform) branches again
        branches.remove(clients, ctx.site.name, env.name)
    snap = _current_snapshot(ctx, kind)
    flt = {
        "label": [
            f"{LABEL_APPS_OF}={ctx.site.name}",
            f"{LABEL_ROLE}={branches.ROLE_BRANCH}",
        ]
    }
    counts = {e: len(clients[e].api.containers(all=True, filters=flt)) for e in placements}
    placement = placements[min(placements, key=lambda e: (counts[e], e))]
    envs, galera = ctx.site.environments, ctx.site.services.galera
    target = clients[placement.engine]
    capacity.reserve_members(target, ctx.site.name, galera.cpu_shares, galera.reserved_memory_mb)
    preview_mb = envs.preview_limits.database.memory_mb + envs.preview_limits.app.memory_mb
    capacity.check_room(
        capacity.room(target, ctx.site.name, galera.reserved_memory_mb, preview_mb),
        placement.node,
    )
    _, builder = _builder(ctx)
    _ship(ctx, builder, {placement.engine: target}, snap, snapshot_route(ctx))
    if ctx.site.engines_here:
        branch_store.ensure_local()  # mounted again after a reboot, before any branch starts
    started = time.monotonic()
    limits = ctx.site.environments.preview_limits.database
    made = branches.create(
        clients[placement.engine],
        placement,
        site=ctx.site.name,
        env=env.name,
        snapshot=snap,
        database=staging_database(ctx.app),
        user=user,
        password=password,
        limits=branches.Limits(limits.cpus, limits.memory_mb),
        timeout=float(ctx.site.timeouts.health),
    )
    ctx.reporter.step(
        f"{env.name}: database branched from {snap.ref} on {placement.node} "
        f"({time.monotonic() - started:.1f} s)"
    )
    return made.host, made.port, snap.ref


def down(ctx: EnvContext, env: Environment) -> bool:
    """Remove the app, the database and its user; False when nothing was there."""
    _root(ctx).close()  # the cluster answers before anything is marked or removed
    with env_lock(ctx.state, env.name, ctx.lock_wait):
        return _down_locked(ctx, env)


def _down_locked(ctx: EnvContext, env: Environment) -> bool:
    if env.pr is not None and not records.is_marked_closed(ctx.state, env.pr):
        records.mark_closed(ctx.state, env.pr)
    removed = ctx.platform.remove(env)
    db = database_of(env)
    had_branch = False
    if env.is_preview:
        had_branch = branches.remove(ctx.session.clients, ctx.site.name, env.name)
        for client in ctx.session.clients.values():
            snapshots.gc(client, ctx.site.name)
    conn = _root(ctx)
    try:
        # a preview made before branches had its database and user on the cluster
        had_db = database.database_exists(conn, db) or had_branch
        database.drop_database_and_user(conn, db, db)
    finally:
        conn.close()
    (ctx.state.secrets_dir / _password_name(env)).unlink(missing_ok=True)
    had_record = records.load(ctx.state, env.name) is not None
    records.delete(ctx.state, env.name)
    return removed or had_db or had_record


def production_image(ctx: EnvContext, sha: str, commits: Sequence[str] = ()) -> str:
    """For a push to the production branch: the exact image staging runs when staging runs that
    commit or one the push brought in (`commits`: a merge of the staging branch makes a new merge
    commit `sha`, with staging's commit among the pushed ones), else the image template's image of
    `sha`. Production then runs what was tested on staging; commits only the production branch
    has (hotfixes) belong merged into the staging branch first, or its image lacks them."""
    stage = names.staging(ctx.app)
    record = records.load(ctx.state, stage.name)
    if record is not None and record.ref and record.ref in {sha, *commits}:
        running = ctx.platform.image_of(stage)
        if running:
            return running
    return names.image_for(ctx.site.environments.image, ctx.app, sha)


def promote(ctx: EnvContext) -> tuple[str, str]:
    """Production runs exactly the image staging runs; returns (image, URL)."""
    stage, prod = names.staging(ctx.app), names.production(ctx.app)
    image = ctx.platform.image_of(stage)
    if image is None:
        raise UsageError(
            f"staging ({stage.name}) runs nothing to promote; deploy it first "
            "(cidemo env up --staging --ref SHA)"
        )
    record = records.load(ctx.state, stage.name)
    ref = record.ref if record is not None and record.ref else "promoted"
    check_up(ctx, prod, image)
    with env_lock(ctx.state, prod.name, ctx.lock_wait):
        return image, _up_locked(ctx, prod, ref, image, is_fork=False, repo="")


@dataclass(frozen=True)
class Collected:
    env: str
    reason: str


def gc(
    ctx: EnvContext,
    *,
    dry_run: bool = False,
    github: PullRequests | None = None,
    repo: str = "",
    now: dt.datetime | None = None,
) -> list[Collected]:
    """Remove previews whose pull request is closed (marker, or GitHub when asked) or that were
    not updated for `preview_ttl_hours`."""
    now = now or dt.datetime.now(dt.UTC)
    ttl = dt.timedelta(hours=ctx.site.environments.preview_ttl_hours)
    updated = {d.env: d.updated for d in ctx.platform.list()}
    doomed = []
    for name in sorted(previews(ctx)):
        env = names.parse(name, ctx.app)
        assert env.pr is not None
        record = records.load(ctx.state, name)
        last = records.parse_time(record.updated if record else updated.get(name, ""))
        owner = repo or (record.repo if record and not record.is_fork else "")
        if records.is_marked_closed(ctx.state, env.pr):
            reason = f"pull request #{env.pr} is closed"
        elif github is not None and owner and github.is_closed(owner, env.pr):
            reason = f"pull request #{env.pr} is closed on GitHub ({owner})"
        elif last is not None and now - last > ttl:
            hours = ctx.site.environments.preview_ttl_hours
            reason = f"idle since {last.isoformat()} (preview_ttl_hours: {hours})"
        else:
            continue
        doomed.append(Collected(name, reason))
    if not dry_run:
        for item in doomed:
            ctx.reporter.step(f"gc: removing {item.env}: {item.reason}")
            down(ctx, names.parse(item.env, ctx.app))
    return doomed


def backup_dir(site: Site, state: StateDir) -> Path:
    configured = site.environments.backup_dir
    return Path(configured).expanduser().absolute() if configured else state.path / "backups"


def backup_store(site: Site, state: StateDir) -> BackupStore:
    """The site's backup store: its object-storage container (connected now, so a cloud problem
    shows before anything is backed up) or its backup directory."""
    envs = site.environments
    return store_for(envs.backup_container, site.cloud, site.name, backup_dir(site, state))


@dataclass(frozen=True)
class Refreshed:
    name: str
    where: str
    tables: int
    rows: int
    pruned: tuple[str, ...]


MAINTENANCE_RETRY_AFTER = 30  # seconds a client is told to wait
MAINTENANCE_TTL = 60  # the key outlives a killed tool by at most this long


@contextlib.contextmanager
def maintenance(ctx: EnvContext, env: str) -> Iterator[None]:
    """Hold `env` in maintenance (the router answers 503 with a Retry-After) while the block
    runs, and put it back after, whatever the block did. The key has a TTL, refreshed from a
    thread, so a tool that dies leaves staging in maintenance for at most MAINTENANCE_TTL s."""
    if not has_router(ctx.site):
        yield
        return
    registry = ctx.session.registry()
    key = maintenance_key(registry.prefix, env)
    value = str(MAINTENANCE_RETRY_AFTER)
    registry.client.write(key, value, ttl=MAINTENANCE_TTL)
    if _router_holds(ctx, env):
        ctx.reporter.step(f"{env} in maintenance (503, Retry-After {value} s) during the restore")
    else:
        ctx.reporter.step(
            f"the router did not confirm {env}'s maintenance in time; restoring anyway"
        )
    done = threading.Event()

    def refresh() -> None:
        while not done.wait(MAINTENANCE_TTL / 3):
            with contextlib.suppress(Exception):  # etcd may blink; the next round retries
                registry.client.write(key, value, ttl=MAINTENANCE_TTL)

    refresher = threading.Thread(target=refresh, daemon=True)
    refresher.start()
    try:
        yield
    finally:
        done.set()
        refresher.join(timeout=10)
        with contextlib.suppress(etcd.EtcdKeyNotFound):
            registry.client.delete(key)
        ctx.reporter.step(f"{env} out of maintenance")


def _router_holds(ctx: EnvContext, env: str, wait: float = 20.0) -> bool:
    """Whether the router has taken `env`'s maintenance into its config (its routes file)."""
    standalone = ctx.session.inventory.of_role("standalone")[0]
    client = ctx.session.clients[standalone.engine]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with contextlib.suppress(docker.errors.DockerException):
            router = client.containers.get(container_name(ctx.site, "router"))
            out = router.exec_run(["cat", "/run/cidemo/routes"]).output.decode(errors="replace")
            if f"@maintenance {env} " in out:
                return True
        time.sleep(0.5)
    return False


def refresh_staging(
    ctx: EnvContext,
    from_backup: str | None = None,
    store: BackupStore | None = None,
    *,
    allow_unauthenticated: bool = False,
) -> Refreshed:
    """Back up production's database into the site's store, then restore staging's from the
    stored copy (fetched back and verified against its manifest first); or, with `from_backup`,
    restore an existing backup of the store (a format-1 one, which has no authentication, only
    with `allow_unauthenticated`). Atomic: a failed restore leaves staging's database as it was.
    Staging's app is held in maintenance during the restore (swarm platform's router). After a
    new backup, all but the newest `environments.backup_keep` are removed."""
    stage, prod = names.staging(ctx.app), names.production(ctx.app)
    source, target = database_of(prod), database_of(stage)
    store = store or backup_store(ctx.site, ctx.state)
    check_refresh(ctx, store, from_backup)
    key = backup.backup_key(ctx.state)
    with env_lock(ctx.state, stage.name, ctx.lock_wait):
        conn = _root(ctx)
        try:
            if from_backup is None:
                name = _back_up(ctx, conn, store, source, key)
            else:
                name = check_name(from_backup)
            with store.fetch(name) as path, maintenance(ctx, stage.name):
                if not database.database_exists(conn, target):
                    database.execute(
                        conn,
                        f"CREATE DATABASE {database.quote_ident(target)} CHARACTER SET utf8mb4",
                    )
                ctx.reporter.step(f"restoring {name} into {target}")
                manifest = backup.restore_database(
                    conn, path, target, key, allow_unauthenticated=allow_unauthenticated
                )
            database.ensure_app_user(conn, target, target, ctx.state.secret(_password_name(stage)))
        finally:
            conn.close()
        pruned: list[str] = []
        if from_backup is None:
            pruned = store.prune(source, ctx.site.environments.backup_keep)
    _refresh_after(ctx, f"{target} now holds {name}")
    rows = sum(t.rows for t in manifest.tables)
    return Refreshed(name, store.where(name), len(manifest.tables), rows, tuple(pruned))


def check_refresh(ctx: EnvContext, store: BackupStore, from_backup: str | None) -> None:
    """Reads only: the backup to restore is in the store, or production's database exists to be
    backed up (checked again under the lock)."""
    if from_backup is not None:
        name = check_name(from_backup)
        if name not in {b.name for b in store.backups()}:
            raise UsageError(
                f"--from {name}: no such complete backup in {store.describe()} "
                "(see cidemo env backups)"
            )
        return
    source = database_of(names.production(ctx.app))
    conn = _root(ctx)
    try:
        _require_production(conn, source)
    finally:
        conn.close()


def _require_production(conn: Any, source: str) -> None:
    if not database.database_exists(conn, source):
        raise UsageError(
            f"production database {source} does not exist; deploy production first "
            "(cidemo env up --production --ref SHA)"
        )


def _back_up(ctx: EnvContext, conn: Any, store: BackupStore, source: str, key: bytes) -> str:
    """A backup of `source`, verified and kept in `store`; its name."""
    _require_production(conn, source)
    ctx.reporter.step(f"backing up {source}")
    local = backup.backup_database(conn, source, store.scratch(), key)
    ctx.reporter.step(f"verifying {local.name} and keeping it in {store.describe()}")
    return store.keep(local, key).name


@dataclass(frozen=True)
class EnvRow:
    name: str
    kind: str
    image: str
    url: str
    database: str
    updated: str
    ref: str
    snapshot: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "image": self.image,
            "url": self.url,
            "database": self.database,
            "updated": self.updated,
            "ref": self.ref,
            "snapshot": self.snapshot,
        }


def list_envs(ctx: EnvContext) -> list[EnvRow]:
    known = {r.name: r for r in records.load_all(ctx.state)}
    running = {d.env: d for d in ctx.platform.list()}
    branched = {
        env: tags.get(branches.LABEL_SNAPSHOT, "")
        for env, tags in branches.list_all(ctx.session.clients, ctx.site.name).items()
    }
    rows = []
    for name in sorted(set(known) | set(running)):
        record, deployment = known.get(name), running.get(name)
        try:
            env: Environment | None = names.parse(name, ctx.app)
        except UsageError:
            env = None  # another app's service under this site
        rows.append(
            EnvRow(
                name=name,
                kind=env.kind if env else "unknown",
                image=deployment.image if deployment else "(not running)",
                url=deployment.url if deployment else (record.url if record else ""),
                database=record.database if record else (database_of(env) if env else ""),
                updated=record.updated if record else (deployment.updated if deployment else ""),
                ref=record.ref if record else "",
                snapshot=branched.get(name) or (record.snapshot if record else ""),
            )
        )
    return rows


@dataclass(frozen=True)
class UpPlan:
    env: str
    image: str
    database: str
    database_action: str
    app_action: str

    def lines(self) -> list[str]:
        return [
            f"{self.env}: database {self.database}: {self.database_action}",
            f"{self.env}: app: {self.app_action}",
        ]


def plan_up(ctx: EnvContext, env: Environment, image: str) -> UpPlan:
    """What `up` would do (for --dry-run); changes nothing."""
    db = database_of(env)
    if env.is_preview:
        found = branches.find(ctx.session.clients, ctx.site.name, env.name)
        record = records.load(ctx.state, env.name)
        kind = snapshot_kind(ctx, record is not None and record.is_fork)
        current = snapshots.current(_builder(ctx)[1], ctx.site.name, kind)
        if found is not None:
            labels = found[1]["Config"].get("Labels") or {}
            db_action = f"keep (branch of {labels.get(branches.LABEL_SNAPSHOT, '?')})"
        elif current is not None:
            db_action = f"branch from {current.ref}"
        else:
            db_action = f"take a {kind} snapshot of {staging_database(ctx.app)}, branch from it"
        return _plan(ctx, env, image, db, db_action)
    conn = _root(ctx)
    try:
        db_action = "keep (exists)" if database.database_exists(conn, db) else "create (empty)"
    finally:
        conn.close()
    return _plan(ctx, env, image, db, db_action)


def _plan(ctx: EnvContext, env: Environment, image: str, db: str, db_action: str) -> UpPlan:
    current = ctx.platform.image_of(env)
    if current is None:
        app_action = f"create, running {image}"
        if env.is_preview and env.name not in previews(ctx):
            names.check_capacity(previews(ctx), env.name, ctx.site.environments.max_previews)
    elif current == image:
        app_action = f"runs {image} already (settings are re-applied)"
    else:
        app_action = f"update {current} -> {image}"
    return UpPlan(env.name, image, db, db_action, app_action)
