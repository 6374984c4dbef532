"""`make bench`'s staging data and database helpers (the branch section uses them).

A realistic staging table (Ghost's `posts`: text bodies, a unique slug, a secondary index) of a
given size; the member behind the proxy and a wait until every member applied every write-set (a
causal read on each: a large write-set returns on the member that ran it before the others have
applied it); a client container of the member's image on the site's network, where a CI job
would run the MariaDB client tools, with the password in a 0600 defaults file copied in, never
in argv.
"""

from __future__ import annotations

import contextlib
import io
import random
import secrets
import tarfile
import uuid
from collections.abc import Iterator
from typing import Any

import docker

from cidemo_infra.databases.database import execute, fetch_rows, quote_ident
from cidemo_infra.galera.member import run_sql

BATCH_ROWS = 200
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


def generate(conn: Any, database: str, size: int) -> int:
    """Posts of blog-like text until their text adds up to `size` bytes; the row count."""
    rng = random.Random(2015)
    drop(conn, database)
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


def stored_mb(conn: Any, database: str) -> float:
    execute(conn, f"ANALYZE TABLE {quote_ident(database)}.posts")
    found = fetch_rows(
        conn,
        "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = %s",
        (database,),
    )
    return float(found[0][0] or 0) / (1 << 20)


def members(conn: Any, client: docker.DockerClient) -> tuple[Any, list[Any]]:
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


def settle(members: list[Any]) -> None:
    """Wait until every member has applied every write-set (a causal read on each)."""
    for member in members:
        rc, out = run_sql(member, "SET SESSION wsrep_sync_wait = 1; SELECT 1")
        if rc != 0:
            raise RuntimeError(f"bench: {member.name} is not caught up: {out[-200:]}")


@contextlib.contextmanager
def client_container(client: docker.DockerClient, member: Any) -> Iterator[tuple[Any, str]]:
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
def defaults_file(container: Any, password: str, host: str, port: int) -> Iterator[str]:
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


def drop(conn: Any, database: str) -> None:
    execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(database)}")
