"""Environment databases on a real 3-member Galera cluster behind the proxy: clone staging into
previews, app users that see only their own database, drop, and the staging refresh from a
production backup (including corrupted backups and a failing swap).

The tests share one provisioned site and run in order. Row equality is checked on every member
over its local socket (`run_sql`), with causal reads so a member answers only once it has applied
every write-set.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import secrets
import shutil
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import docker
import pymysql
import pytest
import yaml

from cidemo_infra.backups import backup as backup_module
from cidemo_infra.backups.backup import (
    BackupError,
    backup_database,
    checksum_table,
    decode_row,
    encode_row,
    restore_database,
    verify_backup,
)
from cidemo_infra.bench.chunked_copy import clone_database
from cidemo_infra.databases.database import (
    DatabaseError,
    connect,
    database_exists,
    drop_database_and_user,
    ensure_app_user,
    quote_ident,
)
from cidemo_infra.galera.member import run_sql
from tests.integration.conftest import TestSite, make_site, remove_site

pytestmark = pytest.mark.integration

STAGING_TABLES = ["authors", "events", "odd`name%", "post_tags", "posts", "settings"]
PRODUCTION_TABLES = ["authors", "events", "post_tags", "posts", "settings", "subscribers"]
ER_TABLEACCESS_DENIED = 1142
ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED = 1045
KEY = secrets.token_urlsafe(32).encode()  # the site's backup key (secrets/backup_key)


@pytest.fixture(scope="module")
def site(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestSite]:
    made = make_site(engine, tmp_path_factory.mktemp("envdb"))
    made.data["services"]["jenkins"]["enabled"] = False
    made.path.write_text(yaml.safe_dump(made.data))
    try:
        result = made.cidemo("provision")
        assert result.rc == 0, result.err + result.out
        yield made
    finally:
        remove_site([engine], made.name)


@pytest.fixture(scope="module")
def conn(site: TestSite) -> Iterator[Any]:
    connection = connect("127.0.0.1", site.rw_port, "root", site.secret("root_password"))
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def members(engine: docker.DockerClient, site: TestSite) -> list[Any]:
    flt = {"label": [f"io.cidemo.site={site.name}", "io.cidemo.role=galera"]}
    found = sorted(engine.containers.list(filters=flt), key=lambda c: c.name)
    assert len(found) == 3
    return found


def sql(conn: Any, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())


def seed(conn: Any, db: str, rng: random.Random, rows: int, extra: str) -> None:
    """Tables with INT, BIGINT, composite and VARCHAR keys; NULLs, unicode, BLOBs, DECIMALs,
    DATETIMEs, a generated column and foreign keys; `extra` names one more table."""
    q = quote_ident(db)
    sql(conn, f"CREATE DATABASE {q}")
    sql(conn, "SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO,STRICT_ALL_TABLES'")
    sql(
        conn,
        f"CREATE TABLE {q}.authors (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL,"
        " bio TEXT NULL, avatar BLOB NULL, created DATETIME(6) NOT NULL)",
    )
    sql(
        conn,
        f"CREATE TABLE {q}.posts (id INT PRIMARY KEY, author_id INT NULL, title VARCHAR(150),"
        " title_len INT AS (CHAR_LENGTH(title)) STORED, body MEDIUMTEXT, price DECIMAL(12,4),"
        " published DATETIME NULL, KEY (published),"
        f" FOREIGN KEY (author_id) REFERENCES {q}.authors (id) ON DELETE CASCADE)",
    )
    sql(
        conn,
        f"CREATE TABLE {q}.events (id BIGINT UNSIGNED PRIMARY KEY, amount DECIMAL(30,10) NULL,"
        " at DATETIME NOT NULL, day DATE NULL, dur TIME(3) NULL)",
    )
    sql(
        conn,
        f"CREATE TABLE {q}.post_tags (post_id INT NOT NULL, tag VARCHAR(40) NOT NULL,"
        f" weight DECIMAL(5,2) NULL, PRIMARY KEY (post_id, tag),"
        f" FOREIGN KEY (post_id) REFERENCES {q}.posts (id) ON DELETE CASCADE)",
    )
    sql(
        conn,
        f"CREATE TABLE {q}.settings (`key` VARCHAR(64) PRIMARY KEY, value TEXT NULL,"
        " raw VARBINARY(255) NULL)",
    )
    sql(conn, f"CREATE TABLE {q}.{quote_ident(extra)} (id INT PRIMARY KEY, note VARCHAR(20))")
    words = ["ghost", "galera", "ünïcødé", "日本語", "emoji 🚀", "quote ' \" `", "back\\slash", ""]
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {q}.authors VALUES (%s, %s, %s, %s, %s)",
            [
                (
                    i,
                    f"{rng.choice(words)} {i}",
                    None if i % 4 == 0 else " ".join(rng.choices(words, k=20)),
                    None if i % 3 == 0 else rng.randbytes(rng.randrange(0, 300)),
                    dt.datetime(2015, 1, 1)
                    + dt.timedelta(seconds=rng.randrange(10**8), microseconds=i),
                )
                for i in range(0, rows // 4)
            ],
        )
        cur.executemany(
            f"INSERT INTO {q}.posts (id, author_id, title, body, price, published)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    i,
                    None if i % 7 == 0 else rng.randrange(rows // 4),
                    f"{rng.choice(words)} post {i}",
                    " ".join(rng.choices(words, k=rng.randrange(0, 400))),
                    Decimal(rng.randrange(-(10**8), 10**8)) / 10000,
                    None if i % 5 == 0 else dt.datetime(2015, 6, 1, 12, 0, i % 60),
                )
                for i in range(1, rows + 1)
            ],
        )
        cur.executemany(
            f"INSERT INTO {q}.events VALUES (%s, %s, %s, %s, %s)",
            [
                (
                    2**63 + i * 7919 if i % 2 else i,
                    None if i % 6 == 0 else Decimal(rng.randrange(10**15)) / 10**10,
                    dt.datetime(2000, 2, 29) + dt.timedelta(minutes=i),
                    None if i % 4 == 0 else dt.date(2016, 2, 29),
                    None if i % 3 == 0 else dt.timedelta(seconds=rng.randrange(-3000000, 3000000)),
                )
                for i in range(rows)
            ],
        )
        cur.executemany(
            f"INSERT INTO {q}.post_tags VALUES (%s, %s, %s)",
            [
                (p, tag, None if p % 2 else Decimal("1.25"))
                for p in range(1, rows + 1)
                for tag in rng.sample(["a", "b", "Ç", "tag 4", "ü"], 3)
            ],
        )
        cur.executemany(
            f"INSERT INTO {q}.settings VALUES (%s, %s, %s)",
            [
                (f"key-{i}-{rng.choice(words)}", None if i % 2 else str(i), b"\x00\x01")
                for i in range(50)
            ],
        )
        cur.execute(f"INSERT INTO {q}.{quote_ident(extra)} VALUES (1, 'x')")
    sql(conn, "SET SESSION sql_mode = DEFAULT")


def columns_of(conn: Any, db: str, table: str) -> tuple[list[str], list[str]]:
    cols = [
        r[0]
        for r in sql(
            conn,
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (db, table),
        )
    ]
    pk = [
        r[0]
        for r in sql(
            conn,
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            (db, table),
        )
    ]
    return cols, pk or cols


def fingerprint(member: Any, conn: Any, db: str, table: str) -> str:
    """`<rows>\t<sha2 of every value, in key order>` as this member sees the table."""
    cols, order = columns_of(conn, db, table)
    values = ", ".join(f"COALESCE(HEX(CAST({quote_ident(c)} AS BINARY)), 'N')" for c in cols)
    statement = (
        "SET SESSION wsrep_sync_wait = 1; SET SESSION group_concat_max_len = 1073741824; "
        f"SELECT COUNT(*), COALESCE(SHA2(GROUP_CONCAT(CONCAT_WS(',', {values}) ORDER BY "
        f"{', '.join(map(quote_ident, order))} SEPARATOR ';'), 256), 'empty') "
        f"FROM {quote_ident(db)}.{quote_ident(table)}"
    )
    rc, out = run_sql(member, statement)
    assert rc == 0, out
    return out


def fingerprints(members: list[Any], conn: Any, db: str) -> list[dict[str, str]]:
    """Per member: every table's and view's fingerprint."""
    names = [
        r[0]
        for r in sql(
            conn,
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
            " ORDER BY TABLE_NAME",
            (db,),
        )
    ]
    return [{n: fingerprint(m, conn, db, n) for n in names} for m in members]


def databases(conn: Any) -> set[str]:
    return {r[0] for r in sql(conn, "SHOW DATABASES")}


@pytest.fixture(scope="module")
def staging(conn: Any) -> str:
    seed(conn, "staging", random.Random(7), 600, "odd`name%")
    sql(
        conn,
        "CREATE VIEW staging.published AS SELECT p.id, p.title, a.name FROM staging.posts p"
        " JOIN staging.authors a ON a.id = p.author_id WHERE p.published IS NOT NULL",
    )
    return "staging"


def test_clone_staging_into_two_previews(conn: Any, members: list[Any], staging: str) -> None:
    first = clone_database(conn, staging, "pr_1", chunk_rows=37)
    second = clone_database(conn, staging, "pr_2")
    total = sum(
        sql(conn, f"SELECT COUNT(*) FROM staging.{quote_ident(t)}")[0][0] for t in STAGING_TABLES
    )
    assert first.tables == second.tables == len(STAGING_TABLES)
    assert first.rows == second.rows == total
    assert first.chunks > total // 37 and second.chunks < first.chunks

    want = fingerprints(members, conn, staging)
    assert set(want[0]) == {*STAGING_TABLES, "published"}
    assert all(w == want[0] for w in want), "members disagree about staging"
    for db in ("pr_1", "pr_2"):
        assert fingerprints(members, conn, db) == want, db

    assert sql(conn, "SELECT name FROM pr_1.authors WHERE id = 0")  # an explicit 0 stays 0
    view = sql(conn, "SHOW CREATE VIEW pr_1.published")[0][1]
    assert "`pr_1`.`posts`" in view and "staging" not in view and "INVOKER" in view
    fks = sorted(
        sql(
            conn,
            "SELECT TABLE_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME, DELETE_RULE"
            " FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = 'pr_1'",
        )
    )
    assert fks == [
        ("post_tags", "pr_1", "posts", "CASCADE"),
        ("posts", "pr_1", "authors", "CASCADE"),
    ]


def as_user(site: TestSite, user: str, password: str) -> Any:
    return pymysql.connect(
        host="127.0.0.1", port=site.rw_port, user=user, password=password, connect_timeout=10
    )


def test_preview_users_see_only_their_own_database(site: TestSite, conn: Any) -> None:
    old, pw1, pw2 = (secrets.token_urlsafe(18) for _ in range(3))
    ensure_app_user(conn, "pr_1", "pr_1", old)
    ensure_app_user(conn, "pr_1", "pr_1", pw1)  # again: the password changes, nothing else
    ensure_app_user(conn, "pr_2", "pr_2", pw2)
    with pytest.raises(pymysql.OperationalError) as denied:
        as_user(site, "pr_1", old)
    assert denied.value.args[0] == ER_ACCESS_DENIED

    app = as_user(site, "pr_1", pw1)
    try:
        assert sql(app, "SELECT COUNT(*) FROM pr_1.posts")[0][0] == 600
        assert sql(app, "SELECT COUNT(*) FROM pr_1.published")[0][0] > 0
        sql(app, "INSERT INTO pr_1.settings (`key`) VALUES ('written by the app')")
        for other in ("pr_2", "staging"):
            with pytest.raises(pymysql.OperationalError) as err:
                sql(app, f"SELECT * FROM {other}.settings")
            assert err.value.args[0] == ER_TABLEACCESS_DENIED, err.value
            with pytest.raises(pymysql.OperationalError) as err:
                app.select_db(other)
            assert err.value.args[0] == ER_DBACCESS_DENIED, err.value
        assert {r[0] for r in sql(app, "SHOW DATABASES")} == {"information_schema", "pr_1"}
        grants = [r[0] for r in sql(app, "SHOW GRANTS")]
        assert len(grants) == 2 and "ON `pr\\_1`.*" in grants[1]
        assert grants[0].startswith("GRANT USAGE ON *.*")
    finally:
        app.close()


def test_a_non_empty_target_is_refused(conn: Any, members: list[Any]) -> None:
    before = fingerprints(members, conn, "pr_1")
    with pytest.raises(DatabaseError, match="`pr_1`: it exists and holds 7 tables"):
        clone_database(conn, "staging", "pr_1")
    assert fingerprints(members, conn, "pr_1") == before


def test_a_table_without_primary_key_is_refused(conn: Any, staging: str) -> None:
    sql(conn, "CREATE TABLE staging.audit_log (at DATETIME, what TEXT)")
    try:
        with pytest.raises(DatabaseError, match="table `audit_log` has no primary key"):
            clone_database(conn, staging, "pr_3")
        assert not database_exists(conn, "pr_3")
    finally:
        sql(conn, "DROP TABLE staging.audit_log")


def test_drop_removes_database_and_user(site: TestSite, conn: Any, members: list[Any]) -> None:
    drop_database_and_user(conn, "pr_2", "pr_2")
    drop_database_and_user(conn, "pr_2", "pr_2")  # a second drop is a no-op
    for member in members:
        rc, out = run_sql(
            member,
            "SET SESSION wsrep_sync_wait = 1; SELECT (SELECT COUNT(*) FROM mysql.user WHERE "
            "User = 'pr_2') + (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE "
            "SCHEMA_NAME = 'pr_2')",
        )
        assert (rc, out) == (0, "0"), member.name
    with pytest.raises(pymysql.OperationalError):
        as_user(site, "pr_2", "any")
    assert database_exists(conn, "pr_1")


@pytest.fixture(scope="module")
def production(conn: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A production database unlike staging (other rows, a table staging lacks), backed up."""
    seed(conn, "production", random.Random(11), 900, "subscribers")
    dest = tmp_path_factory.mktemp("backups")
    return backup_database(conn, "production", dest, KEY)


def test_backup_is_private_complete_and_verifiable(production: Path) -> None:
    assert production.name.startswith("production-") and production.name.endswith("Z")
    assert production.stat().st_mode & 0o777 == 0o700
    assert {p.name for p in production.parent.iterdir()} == {production.name}
    files = sorted(p.name for p in production.iterdir())
    assert files == sorted(["manifest.json", *(f"{t}.jsonl.gz" for t in PRODUCTION_TABLES)])
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in production.iterdir())
    manifest = verify_backup(production, KEY)
    assert manifest.database == "production" and manifest.is_authenticated
    assert sorted(t.name for t in manifest.tables) == PRODUCTION_TABLES
    assert dict((t.name, t.rows) for t in manifest.tables)["posts"] == 900


def test_restore_production_into_staging(conn: Any, members: list[Any], production: Path) -> None:
    manifest = restore_database(conn, production, "staging", KEY)
    tables = {
        r[0] for r in sql(conn, "SHOW FULL TABLES FROM staging WHERE Table_type = 'BASE TABLE'")
    }
    assert tables == set(PRODUCTION_TABLES)  # `odd name%` left with the old staging
    for entry in manifest.tables:
        assert checksum_table(conn, "staging", entry.name) == entry
    prod = fingerprints(members, conn, "production")
    got = fingerprints(members, conn, "staging")
    for member, (p, s) in enumerate(zip(prod, got, strict=True)):
        assert s.pop("published").split("\t")[0] != "0", "the staging view reads the new tables"
        assert s == p, members[member].name
        for entry in manifest.tables:
            assert s[entry.name].split("\t")[0] == str(entry.rows)
    assert not {d for d in databases(conn) if "__restore_" in d or "__old_" in d}


def assert_staging_untouched(conn: Any, members: list[Any], before: list[dict[str, str]]) -> None:
    assert fingerprints(members, conn, "staging") == before
    assert not {d for d in databases(conn) if "__restore_" in d or "__old_" in d}


def corrupt_flip(backup: Path) -> None:
    file = backup / "posts.jsonl.gz"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x20
    file.write_bytes(bytes(data))


def corrupt_row(backup: Path) -> None:
    file = backup / "authors.jsonl.gz"
    lines = gzip.decompress(file.read_bytes()).split(b"\n")
    row = decode_row(lines[3], len(json.loads(lines[3])))
    row[1] = "changed, manifest kept"
    lines[3] = encode_row(row)
    file.write_bytes(gzip.compress(b"\n".join(lines)))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (corrupt_flip, r"posts\.jsonl\.gz: (damaged|line \d+ of table .posts.)"),
        (corrupt_row, r"authors\.jsonl\.gz: (holds more|shorter) than the manifest says"),
    ],
    ids=["flipped-byte", "changed-row"],
)
def test_a_corrupted_backup_is_refused_and_staging_untouched(
    conn: Any,
    members: list[Any],
    production: Path,
    tmp_path: Path,
    corrupt: Any,
    message: str,
) -> None:
    copy = tmp_path / production.name
    shutil.copytree(production, copy)
    corrupt(copy)
    before = fingerprints(members, conn, "staging")
    with pytest.raises(BackupError, match=message):
        restore_database(conn, copy, "staging", KEY)
    assert_staging_untouched(conn, members, before)


def set_table(backup: Path, table: str, lines: list[bytes]) -> None:
    """Replace a table file with these lines, in the manifest too (size, checksum, header),
    without signing it again: what someone with write access to the store can do."""
    data = b"".join(line + b"\n" for line in lines)
    (backup / f"{table}.jsonl.gz").write_bytes(gzip.compress(data))
    digest = backup_module.RowDigest()
    for line in lines[1:]:
        digest.add(line)
    manifest = json.loads((backup / "manifest.json").read_text())
    for entry in manifest["tables"]:
        if entry["name"] == table:
            entry.update(bytes=len(data), checksum=digest.checksum, rows=digest.rows)
            entry["create"] = json.loads(lines[0])["create"]
    (backup / "manifest.json").write_text(json.dumps(manifest))


def sign(backup: Path, key: bytes = KEY) -> None:
    """Authenticate a backup's manifest again: what only the site's key can do."""
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["hmac_sha256"] = backup_module.manifest_mac(manifest, key)
    (backup / "manifest.json").write_text(json.dumps(manifest))


def table_lines(backup: Path, table: str) -> list[bytes]:
    return gzip.decompress((backup / f"{table}.jsonl.gz").read_bytes()).split(b"\n")[:-1]


def with_create(backup: Path, table: str, old: str, new: str) -> None:
    lines = table_lines(backup, table)
    header = json.loads(lines[0])
    assert old in header["create"]
    header["create"] = header["create"].replace(old, new)
    set_table(backup, table, [json.dumps(header).encode(), *lines[1:]])


def tamper_data_directory(backup: Path) -> None:
    with_create(backup, "posts", " ENGINE=InnoDB", " DATA DIRECTORY='/tmp' ENGINE=InnoDB")


def tamper_row(backup: Path) -> None:
    lines = table_lines(backup, "authors")
    row = decode_row(lines[3], len(json.loads(lines[3])))
    row[1] = "changed, and the manifest with it"
    lines[3] = encode_row(row)
    set_table(backup, "authors", lines)


def tamper_gzip_bomb(backup: Path) -> None:
    """A 400 KB gzip member with no newline (about 400 MB decompressed) for a table file."""
    out = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"[" * (1 << 20)
    member = b"".join([out.compress(block) for _ in range(400)] + [out.flush()])
    assert 300_000 < len(member) < 500_000
    (backup / "posts.jsonl.gz").write_bytes(member)


@pytest.mark.parametrize(
    ("tamper", "signed", "refusal"),
    [
        (tamper_data_directory, False, r"manifest\.json: authentication failed"),
        (tamper_data_directory, True, r"'posts': CREATE TABLE refused: table option DATA DIREC"),
        (tamper_row, False, r"manifest\.json: authentication failed"),
        (tamper_gzip_bomb, False, r"posts\.jsonl\.gz: holds more than the manifest says"),
    ],
    ids=["data-directory", "data-directory-signed", "modified-row", "gzip-bomb"],
)
def test_a_tampered_backup_is_refused_and_nothing_changes(
    conn: Any,
    members: list[Any],
    production: Path,
    tmp_path: Path,
    tamper: Any,
    signed: bool,
    refusal: str,
) -> None:
    """Backups kept where others can write: each tampering is one line, and neither staging,
    the server's databases nor its file system (DATA DIRECTORY='/tmp') changes."""
    copy = tmp_path / production.name
    shutil.copytree(production, copy)
    tamper(copy)
    if signed:
        sign(copy)
    before = fingerprints(members, conn, "staging")
    files_before = [m.exec_run(["ls", "-A", "/tmp"]).output for m in members]
    with pytest.raises(BackupError, match=refusal) as caught:
        restore_database(conn, copy, "staging", KEY)
    assert "\n" not in str(caught.value)
    assert_staging_untouched(conn, members, before)
    assert [m.exec_run(["ls", "-A", "/tmp"]).output for m in members] == files_before


def test_a_production_table_a_restore_would_refuse_is_not_backed_up(
    conn: Any, tmp_path: Path
) -> None:
    sql(conn, "CREATE DATABASE parted")
    try:
        sql(conn, "CREATE TABLE parted.t (id int PRIMARY KEY) PARTITION BY HASH (id) PARTITIONS 2")
        with pytest.raises(BackupError, match=r"cannot back up `parted`\.`t`: .*PARTITION BY"):
            backup_database(conn, "parted", tmp_path, KEY)
        assert list(tmp_path.iterdir()) == []
    finally:
        sql(conn, "DROP DATABASE parted")


def test_a_schema_that_changes_the_rows_is_caught_in_the_database(
    conn: Any, members: list[Any], production: Path, tmp_path: Path
) -> None:
    """Defence in depth: even a CREATE TABLE signed with the site's key is checked against the
    rows. The files verify (their rows match the manifest), but the changed CREATE TABLE rounds
    the prices as they load: only the checksum recomputed in the database can see it."""
    copy = tmp_path / production.name
    shutil.copytree(production, copy)
    with_create(copy, "posts", "decimal(12,4)", "decimal(12,2)")
    sign(copy)
    verify_backup(copy, KEY)
    before = fingerprints(members, conn, "staging")
    with pytest.raises(BackupError, match=r"restored `staging__restore_\d+`: table 'posts' does"):
        restore_database(conn, copy, "staging", KEY)
    assert_staging_untouched(conn, members, before)


def test_a_failing_swap_leaves_staging_untouched(
    conn: Any, members: list[Any], production: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real RENAME TABLE, made to fail by one more pair naming a missing table: the server
    undoes the whole statement, and the restore drops what it made."""
    real = backup_module.execute

    def failing_rename(connection: Any, statement: str, args: Any = None) -> int:
        if statement.startswith("RENAME TABLE"):
            statement += ", `staging`.`no_such_table` TO `staging`.`still_none`"
        return real(connection, statement, args)

    monkeypatch.setattr(backup_module, "execute", failing_rename)
    before = fingerprints(members, conn, "staging")
    with pytest.raises(BackupError, match=r"restore into staging: .*no_such_table"):
        restore_database(conn, production, "staging", KEY)
    assert_staging_untouched(conn, members, before)


def test_a_target_with_triggers_is_refused_up_front(
    conn: Any, members: list[Any], production: Path
) -> None:
    sql(
        conn,
        "CREATE TRIGGER staging.keep BEFORE INSERT ON staging.settings FOR EACH ROW SET @x = 1",
    )
    try:
        before = fingerprints(members, conn, "staging")
        with pytest.raises(BackupError, match="it has trigger `keep`"):
            restore_database(conn, production, "staging", KEY)
        assert_staging_untouched(conn, members, before)
    finally:
        sql(conn, "DROP TRIGGER staging.keep")
