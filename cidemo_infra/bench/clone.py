"""`make bench`, database section: `clone_database` against `mysqldump <db> | mysql <target>`.

On a cluster the caller has provisioned, generate a realistic staging table (Ghost's `posts`: text
bodies, a unique slug, a secondary index) of 10 MB and of 100 MB, then copy it every way in one
run. Two baselines run the MariaDB client tools:
- through the proxy from a client container on the site's network: the client-side copy the clone
  replaces (a CI job or an operator's shell dumps staging through the proxy and loads it back);
- inside the member that serves the proxy's read-write port, over its loopback: the most
  favourable place for them (no proxy, no network), a bound no client-side copy can beat.
The password reaches the tools in a 0600 defaults file copied into the container, never in argv.
A last way gives the floor of any server-side copy: one `INSERT ... SELECT` of the whole table
(one write-set, no chunks). A copy is timed until every member has applied it (a causal read on
each), since a single large write-set returns on the member that ran it before the others have
applied it. Each way runs REPEATS times in rotating order and its fastest run counts.
"""

from __future__ import annotations

import contextlib
import io
import random
import secrets
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker

from cidemo_infra.bench.chunked_copy import clone_database
from cidemo_infra.databases.database import (
    connect,
    execute,
    fetch_rows,
    quote_ident,
)
from cidemo_infra.engines import client_for
from cidemo_infra.galera.member import run_sql
from cidemo_infra.placement.specs import PROXY_RW_PORT

SIZES_MB = (10, 100)
TARGET_MB, TARGET_FASTER = 100, 5  # the target: at 100 MB, 5x faster than the dump
REPEATS = 3  # the engine is shared: the best of three is the least disturbed
BATCH_ROWS = 200
PREFIX = "bench_clone_"
CORPUS = (
    "galera cluster write set certification replication proxy preview staging production "
    "database ghost blog post markdown html theme author tag deploy commit branch pull "
    "request docker etcd container network backup restore snapshot consistent chunk primary "
    "key index the a of to and in is it that for on with as be at by this from or an"
)
WORDS = CORPUS.split()
POSTS = """CREATE TABLE {db}.posts (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  uuid CHAR(36) NOT NULL,
  title VARCHAR(150) NOT NULL,
  slug VARCHAR(150) NOT NULL,
  markdown MEDIUMTEXT NULL,
  html MEDIUMTEXT NULL,
  image TEXT NULL,
  featured TINYINT(1) NOT NULL DEFAULT 0,
  status VARCHAR(150) NOT NULL DEFAULT 'draft',
  language VARCHAR(6) NOT NULL DEFAULT 'en_US',
  meta_description VARCHAR(200) NULL,
  author_id INT NOT NULL,
  created_at DATETIME NOT NULL,
  updated_at DATETIME NULL,
  published_at DATETIME NULL,
  UNIQUE KEY posts_slug_unique (slug),
  KEY posts_status_published (status, published_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""


def run(rw: tuple[str, int], password: str) -> tuple[list[list[str]], list[str]]:
    """Rows `[measurement, cidemo, baseline, ratio]` (ratio = cidemo / baseline, as in bench.py)
    per size: against `mysqldump | mysql` through the proxy and inside the member, and against the
    floor of any server-side copy (one `INSERT ... SELECT` of the whole table); and one summary
    line per size ("N x faster"). Every database and container it made is removed again."""
    conn = connect(rw[0], rw[1], "root", password)
    client = client_for("unix:///var/run/docker.sock", node="local")
    rows: list[list[str]] = []
    summary: list[str] = []
    try:
        member, others = _members(conn, client)
        with (
            _client_container(client, member) as (box, proxy),
            _defaults_file(box, password, proxy, PROXY_RW_PORT) as box_cnf,
            _defaults_file(member, password, "127.0.0.1", 3306) as member_cnf,
        ):
            tools = {"proxy": (box, box_cnf), "member": (member, member_cnf)}
            for mb in SIZES_MB:
                source = f"{PREFIX}{mb}mb"
                try:
                    count = _generate(conn, source, mb << 20)
                    size = _stored_mb(conn, source)
                    best = _measure(conn, tools, [member, *others], source)
                finally:
                    _drop(conn, source)
                clone = best["clone"]
                baselines = (
                    (
                        f"clone {mb} MB of posts ({count} rows, {size:.0f} MB in InnoDB)",
                        f"mysqldump | mysql via the proxy, {best['proxy']:.2f} s",
                        best["proxy"],
                    ),
                    (
                        f"clone {mb} MB vs the most favourable dump",
                        f"mysqldump | mysql in the member, {best['member']:.2f} s",
                        best["member"],
                    ),
                    (
                        f"clone {mb} MB vs its floor",
                        f"one INSERT ... SELECT, {best['floor']:.2f} s",
                        best["floor"],
                    ),
                )
                for what, baseline, seconds in baselines:
                    rows.append([what, f"{clone:.2f} s", baseline, f"{clone / seconds:.2f}x"])
                summary.append(
                    f"clone {mb} MB: {best['proxy'] / clone:.1f}x faster than mysqldump | mysql "
                    f"via the proxy, {best['member'] / clone:.1f}x than in the member"
                    + (f" (target at {TARGET_MB} MB: {TARGET_FASTER}x)" if mb == TARGET_MB else "")
                )
    finally:
        for (name,) in fetch_rows(
            conn, "SHOW DATABASES LIKE %s", (PREFIX.replace("_", "\\_") + "%",)
        ):
            _drop(conn, name)
        conn.close()
        client.close()
    return rows, summary


def _measure(
    conn: Any, tools: dict[str, tuple[Any, str]], members: list[Any], source: str
) -> dict[str, float]:
    """Best of REPEATS for each way, in rotating order so none always runs on a warmer cache."""
    target = f"{source}_copy"
    src, dst = quote_ident(source), quote_ident(target)

    def clone() -> None:
        clone_database(conn, source, target)

    def dump(where: str) -> Callable[[], None]:
        container, cnf = tools[where]
        script = (
            "set -euo pipefail; "
            f"mariadb --defaults-extra-file={cnf} -e 'CREATE DATABASE {target}'; "
            f"mariadb-dump --defaults-extra-file={cnf} --single-transaction {source} "
            f"| mariadb --defaults-extra-file={cnf} {target}"
        )

        def run_dump() -> None:
            result = container.exec_run(["bash", "-c", script])
            if result.exit_code != 0:
                raise RuntimeError(
                    f"mysqldump | mysql ({where}) failed: {result.output.decode()[-300:]}"
                )

        return run_dump

    def floor() -> None:
        execute(conn, f"CREATE DATABASE {dst}")
        execute(conn, f"CREATE TABLE {dst}.posts LIKE {src}.posts")
        execute(conn, f"INSERT INTO {dst}.posts SELECT * FROM {src}.posts")

    ways: dict[str, Callable[[], None]] = {
        "clone": clone,
        "proxy": dump("proxy"),
        "member": dump("member"),
        "floor": floor,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    want = fetch_rows(conn, f"SELECT COUNT(*) FROM {src}.posts")[0][0]
    for i in range(REPEATS):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            _settle(members)
            start = time.monotonic()
            ways[name]()
            _settle(members)  # a copy is done when every member has applied it
            times[name].append(time.monotonic() - start)
            got = fetch_rows(conn, f"SELECT COUNT(*) FROM {dst}.posts")[0][0]
            if got != want:
                raise RuntimeError(f"{name} copied {got} of {want} rows")
            _drop(conn, target)
    return {name: min(values) for name, values in times.items()}


def _generate(conn: Any, database: str, size: int) -> int:
    """Posts of blog-like text until their text adds up to `size` bytes; the row count."""
    rng = random.Random(2015)
    _drop(conn, database)
    execute(conn, f"CREATE DATABASE {quote_ident(database)} CHARACTER SET utf8mb4")
    execute(conn, POSTS.format(db=quote_ident(database)))
    insert = (
        f"INSERT INTO {quote_ident(database)}.posts (uuid, title, slug, markdown, html, "
        "featured, status, meta_description, author_id, created_at, updated_at, published_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    written = count = 0
    while written < size:
        batch = []
        for _ in range(BATCH_ROWS):
            count += 1
            title = " ".join(rng.choices(WORDS, k=rng.randrange(3, 12))).capitalize()
            paragraphs = [" ".join(rng.choices(WORDS, k=rng.randrange(20, 120))) for _ in range(4)]
            markdown = "\n\n".join(paragraphs)
            html = "".join(f"<p>{p}</p>\n" for p in paragraphs)
            written += len(title) + len(markdown) + len(html)
            stamp = f"2015-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} 12:00:00"
            batch.append(
                (
                    str(uuid.UUID(int=rng.getrandbits(128))),
                    title[:150],
                    f"post-{count}",
                    markdown,
                    html,
                    rng.random() < 0.1,
                    rng.choice(["published", "draft"]),
                    title[:200],
                    rng.randrange(1, 20),
                    stamp,
                    stamp,
                    stamp,
                )
            )
        with conn.cursor() as cur:
            cur.executemany(insert, batch)
    return count


def _stored_mb(conn: Any, database: str) -> float:
    execute(conn, f"ANALYZE TABLE {quote_ident(database)}.posts")
    found = fetch_rows(
        conn,
        "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = %s",
        (database,),
    )
    return float(found[0][0] or 0) / (1 << 20)


def _members(conn: Any, client: docker.DockerClient) -> tuple[Any, list[Any]]:
    """The member behind the proxy's read-write port (by its node address), and the others."""
    address, hostname = fetch_rows(conn, "SELECT @@wsrep_node_address, @@hostname")[0]
    address = str(address).split(":")[0]
    found = client.containers.list(filters={"label": "io.cidemo.role=galera"})

    def addresses(container: Any) -> set[str]:
        return {n.get("IPAddress") for n in container.attrs["NetworkSettings"]["Networks"].values()}

    serving = [c for c in found if c.name == hostname and address in addresses(c)]
    if len(serving) != 1:
        raise RuntimeError(f"bench: no single galera container {hostname} at {address}")
    site = serving[0].labels.get("io.cidemo.site")
    others = [c for c in found if c.labels.get("io.cidemo.site") == site and c.id != serving[0].id]
    return serving[0], others


def _settle(members: list[Any]) -> None:
    """Wait until every member has applied every write-set (a causal read on each)."""
    for member in members:
        rc, out = run_sql(member, "SET SESSION wsrep_sync_wait = 1; SELECT 1")
        if rc != 0:
            raise RuntimeError(f"bench: {member.name} is not caught up: {out[-200:]}")


@contextlib.contextmanager
def _client_container(client: docker.DockerClient, member: Any) -> Iterator[tuple[Any, str]]:
    """A container of the member's image (it has the MariaDB client tools) on the site's network,
    where a CI job would run them; yields it and the proxy's name on that network."""
    site = member.labels.get("io.cidemo.site")
    proxies = client.containers.list(
        filters={"label": ["io.cidemo.role=dbproxy", f"io.cidemo.site={site}"]}
    )
    if len(proxies) != 1:
        raise RuntimeError(f"bench: no single proxy container for site {site}")
    network = f"cidemo-{site}"  # the site network (the proxy may also be on the apps' overlay)
    if network not in proxies[0].attrs["NetworkSettings"]["Networks"]:
        raise RuntimeError(f"bench: the proxy of {site} is not on the site network {network}")
    box = client.containers.run(
        member.attrs["Config"]["Image"],
        entrypoint=["sleep", "infinity"],
        name=f"cidemo-bench-client-{secrets.token_hex(3)}",
        network=network,
        labels={"io.cidemo.bench": "client"},
        detach=True,
    )
    try:
        yield box, proxies[0].name
    finally:
        box.remove(force=True)


@contextlib.contextmanager
def _defaults_file(container: Any, password: str, host: str, port: int) -> Iterator[str]:
    """A `[client]` file (0600, in a 0700 directory) in the container; removed afterwards."""
    folder = f"/tmp/cidemo-bench-{secrets.token_hex(4)}"
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    body = (
        f'[client]\nuser=root\npassword="{escaped}"\nhost={host}\nport={port}\nprotocol=tcp\n'
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(folder.lstrip("/"))
        info.type, info.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(info)
        info = tarfile.TarInfo(f"{folder.lstrip('/')}/client.cnf")
        info.size, info.mode = len(body), 0o600
        tar.addfile(info, io.BytesIO(body))
    if not container.put_archive("/", buf.getvalue()):
        raise RuntimeError(f"bench: cannot copy the defaults file into {container.name}")
    try:
        yield f"{folder}/client.cnf"
    finally:
        container.exec_run(["rm", "-rf", folder])


def _drop(conn: Any, database: str) -> None:
    execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(database)}")
