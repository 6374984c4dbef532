"""`make bench`, preview databases: a branch of a snapshot against the copies it replaces.

On a provisioned local site (the bench's), staging's database is filled with Ghost-like posts
(bench/staging_data.py's generator) of 100 MB, and of 1 GB with CIDEMO_BENCH_LARGE=1 (its generation
alone takes minutes on Galera). Per size, in one run:
- a snapshot of it (`env snapshot`'s function; informational: not a goal);
- **branch ready**: from `docker create` of the preview's database until the app's user, over
  TCP, has run one `SELECT ... LIMIT 1` per table and got a row; against `mysqldump | mysql`
  through the proxy into the cluster and the chunked server-side copy (bench/chunked_copy.py,
  the product's before branches), each timed until every member applied it;
- disk of one branch (the blocks the branch store's filesystem gave it, synced, plus its
  container's upper layer, `SizeRw`): when its server answers, after one SELECT per table, after
  1 MiB more of rows;
- ten branches at once against one.
Once: the memory of one idle preview (its database container and its app task, the cgroups'
usage less their inactive file cache) and from it, and from the limits, the previews an 8 GiB
node holds beside one Galera member (its own measured memory, or its reservation if larger).
Timings are measured here and never asserted by tests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from cidemo_infra import images
from cidemo_infra.bench import staging_data
from cidemo_infra.bench.chunked_copy import clone_database
from cidemo_infra.console import Reporter
from cidemo_infra.databases import branches, snapshots
from cidemo_infra.databases.database import connect, execute, fetch_rows, quote_ident
from cidemo_infra.envs import names
from cidemo_infra.pipeline import operations
from cidemo_infra.placement import branch_store
from cidemo_infra.placement.specs import PROXY_RW_PORT
from cidemo_infra.platforms.swarm import service_name
from cidemo_infra.site import load_site
from cidemo_infra.state import StateDir

REPO = Path(__file__).resolve().parents[2]
GUESTBOOK = REPO / "examples" / "guestbook"
LARGE = os.environ.get("CIDEMO_BENCH_LARGE") == "1"
SIZES_MB: tuple[int, ...] = (100, 1000) if LARGE else (100,)
if os.environ.get("CIDEMO_BENCH_BRANCH_MB"):  # other sizes ("10", "1000"), or "none": memory only
    chosen = os.environ["CIDEMO_BENCH_BRANCH_MB"]
    SIZES_MB = () if chosen == "none" else tuple(int(x) for x in chosen.split(","))
REPEATS = 3  # the engine is shared: the best of three is the least disturbed
AT_ONCE = 10
NODE_MB = 8192
OS_MB = 512  # the node's own: kernel, dockerd, containerd, etcd
PR_BASE = 9100
MIB = 1 << 20
GROW_ROWS = 2000


def run(
    site_path: Path, state_dir: Path, emit: Callable[[list[list[str]]], None] | None = None
) -> tuple[list[list[str]], list[str]]:
    """Rows `[measurement, cidemo, baseline, ratio]` and summary lines; `emit` gets each
    section's rows as soon as they are measured."""
    site = load_site(site_path)
    state = StateDir(state_dir, site.name)
    rows: list[list[str]] = []
    notes: list[str] = []
    reporter = Reporter(quiet=True)
    with operations.open_envs(site, state, reporter) as ctx:
        password = state.known_secret("root_password") or ""
        conn = connect("127.0.0.1", site.services.proxy.rw_port, "root", password)
        stage = operations.staging_database(ctx.app)
        placement = ctx.platform.branch_placements()[0]
        client = ctx.session.clients[placement.engine]
        try:
            member, others = staging_data.members(conn, client)
            rows += _emitted(emit, _memory(ctx, client, placement, member, notes))
            with (
                staging_data.client_container(client, member) as (box, proxy),
                staging_data.defaults_file(box, password, proxy, PROXY_RW_PORT) as cnf,
            ):
                for mb in SIZES_MB:
                    measured = _size(
                        ctx, conn, client, placement, (box, cnf), [member, *others], mb, notes
                    )
                    rows += _emitted(emit, measured)
        finally:
            _remove_branches(ctx)
            for db in (stage, f"{stage}_copy"):
                execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(db)}")
            conn.close()
    return rows, notes


def _emitted(
    emit: Callable[[list[list[str]]], None] | None, rows: list[list[str]]
) -> list[list[str]]:
    if emit is not None:
        emit(rows)
    return rows


def _size(
    ctx: operations.EnvContext,
    conn: Any,
    client: docker.DockerClient,
    placement: branches.Placement,
    tool: tuple[Any, str],
    members: list[Any],
    mb: int,
    notes: list[str],
) -> list[list[str]]:
    stage = operations.staging_database(ctx.app)
    count = staging_data.generate(conn, stage, min(mb, 100) << 20)
    if mb > 100:
        count = _grow(conn, stage, mb // 100)
    execute(conn, f"CREATE TABLE {quote_ident(stage)}.tags (id INT PRIMARY KEY, name TEXT)")
    execute(conn, f"INSERT INTO {quote_ident(stage)}.tags VALUES (1, 'bench'), (2, 'branch')")
    stored = staging_data.stored_mb(conn, stage)
    started = time.monotonic()
    snap = operations.take_snapshot(ctx, "full")
    snapshot_s = time.monotonic() - started
    tables = [t for (t,) in fetch_rows(conn, f"SHOW TABLES FROM {quote_ident(stage)}")]
    repeats = REPEATS if mb < 1000 else 1

    branch_times: list[float] = []
    up_times: list[float] = []
    disk: dict[str, float] = {}
    for i in range(REPEATS):
        up, seconds, made = _branch(
            ctx, client, placement, snap, PR_BASE + i, tables, disk if i == 0 else None
        )
        branch_times.append(seconds)
        up_times.append(up)
        branches.remove({placement.engine: client}, ctx.site.name, made)
    one = min(branch_times)
    print(
        f"bench: {mb} MB: branches up {up_times}, ready {branch_times}, disk {disk}",
        file=sys.stderr,
        flush=True,
    )

    with concurrent.futures.ThreadPoolExecutor(AT_ONCE) as pool:
        started = time.monotonic()
        made_many = list(
            pool.map(
                lambda i: _branch(ctx, client, placement, snap, PR_BASE + 20 + i, tables, None)[2],
                range(AT_ONCE),
            )
        )
        many = time.monotonic() - started
    for env in made_many:
        branches.remove({placement.engine: client}, ctx.site.name, env)

    target = f"{stage}_copy"
    box, cnf = tool
    script = (
        "set -euo pipefail; "
        f"mariadb --defaults-extra-file={cnf} -e 'CREATE DATABASE {target}'; "
        f"mariadb-dump --defaults-extra-file={cnf} --single-transaction {stage} "
        f"| mariadb --defaults-extra-file={cnf} {target}"
    )

    def dump() -> None:
        result = box.exec_run(["bash", "-c", script])
        if result.exit_code != 0:
            raise RuntimeError(f"mysqldump | mysql failed: {result.output.decode()[-300:]}")

    def chunked() -> None:
        clone_database(conn, stage, target)

    baselines = {}
    for name, way in (("dump", dump), ("chunked", chunked)):
        best = float("inf")
        for _ in range(repeats):
            best = min(best, _timed_copy(way, conn, members, target))
        baselines[name] = best
    execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(stage)}")

    label = f"{mb} MB staging ({count} posts, {stored:.0f} MB in InnoDB)"
    notes.append(
        f"{label}: snapshot taken in {snapshot_s:.1f} s; a branch's server answers its user in "
        f"{min(up_times):.2f} s, ready (a row of every table) in {one:.2f} s, "
        f"{baselines['dump'] / one:.1f}x faster than mysqldump | mysql, "
        f"{baselines['chunked'] / one:.1f}x faster than the chunked copy; ten at once "
        f"{many / one:.2f}x one (goals: <= 2 s, >= 10x at 1 GB, <= 3x)"
    )
    return [
        [
            f"branch ready, {label}",
            f"{one:.2f} s",
            f"mysqldump | mysql, {baselines['dump']:.2f} s",
            f"{one / baselines['dump']:.3f}x",
        ],
        [
            f"branch ready, {mb} MB",
            f"{one:.2f} s",
            f"chunked server-side copy, {baselines['chunked']:.2f} s",
            f"{one / baselines['chunked']:.3f}x",
        ],
        [
            f"ten branches at once, {mb} MB",
            f"{many:.2f} s",
            f"one branch, {one:.2f} s",
            f"{many / one:.2f}x",
        ],
        [
            f"disk of a branch, {mb} MB: server up / one SELECT per table / +1 MiB of rows",
            f"{disk['up']:.1f} / {disk['read']:.1f} / {disk['written']:.1f} MiB",
            f"snapshot {stored:.0f} MB in InnoDB, shared",
            "",
        ],
    ]


def _timed_copy(way: Callable[[], None], conn: Any, members: list[Any], target: str) -> float:
    """One copy, timed until every member applied it; a copy the loaded machine broke (the
    proxy losing a member's registration for a moment) is dropped and run again, twice at most."""
    for attempt in range(3):
        staging_data.settle(members)
        started = time.monotonic()
        try:
            way()
            staging_data.settle(members)
            return time.monotonic() - started
        except Exception as exc:
            if attempt == 2:
                raise
            print(f"bench: a copy failed ({exc}); again", file=sys.stderr, flush=True)
            time.sleep(5)
        finally:
            with contextlib.suppress(Exception):
                execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(target)}")
    raise AssertionError("unreachable")


def _grow(conn: Any, database: str, times: int) -> int:
    """The posts `times` over, copied on the server in chunks of GROW_ROWS (a write-set of
    about 10 MB each; generating 1 GB row by row from here takes half an hour on Galera)."""
    posts = f"{quote_ident(database)}.posts"
    (top,) = fetch_rows(conn, f"SELECT MAX(id) FROM {posts}")[0]
    columns = (
        "featured, status, language, meta_description, author_id, created_at, updated_at, "
        "published_at"
    )
    for copy in range(1, times):
        for low in range(0, int(top), GROW_ROWS):
            execute(
                conn,
                f"INSERT INTO {posts} (uuid, title, slug, markdown, html, {columns}) "
                f"SELECT UUID(), title, CONCAT(slug, '-{copy}'), markdown, html, {columns} "
                f"FROM {posts} WHERE id > %s AND id <= %s",
                (low, low + GROW_ROWS),
            )
    return int(fetch_rows(conn, f"SELECT COUNT(*) FROM {posts}")[0][0])


def _branch(
    ctx: operations.EnvContext,
    client: docker.DockerClient,
    placement: branches.Placement,
    snap: snapshots.Snapshot,
    pr: int,
    tables: list[str],
    disk: dict[str, float] | None,
) -> tuple[float, float, str]:
    """Seconds from create until the server answered (its user exists), and until the app user
    read a row of every table; the env's name."""
    env = names.preview(pr, ctx.app).name
    user, password = f"pr_{pr}", secrets.token_urlsafe(18)
    limits = ctx.site.environments.preview_limits.database
    stage = operations.staging_database(ctx.app)
    base = _store_used() if disk is not None else 0
    started = time.monotonic()
    made = branches.create(
        client,
        placement,
        site=ctx.site.name,
        env=env,
        snapshot=snap,
        database=stage,
        user=user,
        password=password,
        limits=branches.Limits(limits.cpus, limits.memory_mb),
    )
    up = time.monotonic() - started
    box = client.containers.get(made.container)
    if disk is not None:
        disk["up"] = _disk_mb(client, box.id, base)
    selects = "; ".join(
        f"SELECT 1 FROM {quote_ident(stage)}.{quote_ident(t)} LIMIT 1" for t in tables
    )
    result = box.exec_run(
        ["mariadb", "-h", "127.0.0.1", "-u", user, "-N", "-B", "-e", selects],
        environment={"MYSQL_PWD": password},  # the bench's app stand-in; never the product's way
    )
    if result.exit_code != 0 or result.output.split().count(b"1") != len(tables):
        raise RuntimeError(f"bench: {env} did not answer: {result.output.decode()[-200:]}")
    seconds = time.monotonic() - started
    if disk is not None:
        disk["read"] = _disk_mb(client, box.id, base)
        write = (
            f"INSERT INTO {quote_ident(stage)}.tags SELECT seq + 10, REPEAT('x', 1024) "
            f"FROM seq_1_to_1024"
        )
        box.exec_run(["mariadb", "-D", stage, "-e", write])
        disk["written"] = _disk_mb(client, box.id, base)
    return up, seconds, env


def _store_used() -> int:
    os.sync()  # XFS allocates delayed writes at writeback: count what the branch really holds
    return branch_store.used_bytes()


def _disk_mb(client: docker.DockerClient, container: str, base: int) -> float:
    """What one branch added to the store's filesystem since `base`, and its upper layer."""
    return (_store_used() - base) / MIB + _size_rw(client, container)


def _size_rw(client: docker.DockerClient, container: str) -> float:
    info = client.api._result(
        client.api._get(client.api._url("/containers/{0}/json", container), params={"size": 1}),
        True,
    )
    return float(info.get("SizeRw") or 0) / MIB


def _memory_mb(client: docker.DockerClient, container: str) -> float:
    """Usage less inactive file cache, as `docker stats` shows it; read from the cgroup (v1)
    where the engine's stats come back empty (as on this machine's Docker 20.10)."""
    stats = client.api.stats(container, stream=False).get("memory_stats") or {}
    if stats.get("usage"):
        inner = stats.get("stats") or {}
        cache = inner.get("inactive_file", inner.get("total_inactive_file", 0))
        return float(stats["usage"] - cache) / MIB
    folder = Path("/sys/fs/cgroup/memory/docker") / client.api.inspect_container(container)["Id"]
    usage = int((folder / "memory.usage_in_bytes").read_text())
    fields = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    return float(usage - int(fields.get("total_inactive_file", 0))) / MIB


def _memory(
    ctx: operations.EnvContext,
    client: docker.DockerClient,
    placement: branches.Placement,
    member: Any,
    notes: list[str],
) -> list[list[str]]:
    """One idle preview deployed the product's way (`env up`): its two containers' memory."""
    stage = operations.staging_database(ctx.app)
    conn = connect(
        "127.0.0.1",
        ctx.site.services.proxy.rw_port,
        "root",
        ctx.state.known_secret("root_password") or "",
    )
    execute(conn, f"CREATE DATABASE IF NOT EXISTS {quote_ident(stage)}")
    execute(
        conn,
        f"CREATE TABLE IF NOT EXISTS {quote_ident(stage)}.entries (id INT AUTO_INCREMENT "
        "PRIMARY KEY, message VARCHAR(500) NOT NULL, "
        "created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    conn.close()
    sha = secrets.token_hex(20)
    tag = f"cidemo/guestbook:{sha}"
    images.build_app_image(
        client, GUESTBOOK, tag, Reporter(quiet=True), build_args={"APP_VERSION": sha}
    )
    env = names.preview(PR_BASE + 99, ctx.app)
    try:
        operations.take_snapshot(ctx, "full")
        operations.up(ctx, env, sha, tag)
        time.sleep(20)  # idle: after the start and the first health checks
        db = _memory_mb(client, branches.container_name(ctx.site.name, env.name))
        tasks = client.api.containers(
            filters={
                "label": "com.docker.swarm.service.name=" + service_name(ctx.site.name, env.name)
            }
        )
        app = sum(_memory_mb(client, t["Id"]) for t in tasks)
        galera = max(
            _memory_mb(client, member.id), float(ctx.site.services.galera.reserved_memory_mb)
        )
    finally:
        with contextlib.suppress(Exception):
            operations.down(ctx, env)
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(tag)
    limits = ctx.site.environments.preview_limits
    by_limits = limits.app.memory_mb + limits.database.memory_mb
    free = NODE_MB - OS_MB - galera
    measured = int(free // (db + app))
    limited = int(free // by_limits)
    notes.append(
        f"an idle preview: database {db:.0f} MiB + app {app:.0f} MiB; an 8 GiB node beside a "
        f"Galera member ({galera:.0f} MiB) and {OS_MB} MiB for the node holds {measured} idle "
        f"previews, {limited} at their limits ({by_limits} MiB each), which the room check enforces"
    )
    return [
        [
            "memory of one idle preview (database + app)",
            f"{db:.0f} + {app:.0f} MiB",
            f"limits {limits.database.memory_mb} + {limits.app.memory_mb} MiB",
            "",
        ],
        [
            "previews an 8 GiB node holds beside a member",
            f"{measured} idle",
            f"{limited} at their limits",
            "",
        ],
    ]


def _remove_branches(ctx: operations.EnvContext) -> None:
    for env in branches.list_all(ctx.session.clients, ctx.site.name):
        if env.startswith(f"pr-{PR_BASE // 100}"):
            branches.remove(ctx.session.clients, ctx.site.name, env)


def main() -> None:
    """`python -m cidemo_infra.bench.branch SITE STATE_DIR`: this section alone, on a
    provisioned site of one's own (it replaces that site's staging database and snapshots)."""

    def emit(rows: list[list[str]]) -> None:
        for row in rows:
            print(" | ".join(row), flush=True)

    rows, notes = run(Path(sys.argv[1]), Path(sys.argv[2]), emit)
    reporter = Reporter()
    reporter.table(["measurement", "cidemo", "baseline (same run)", "ratio"], rows)
    for line in notes:
        reporter.line(line)


if __name__ == "__main__":
    main()
