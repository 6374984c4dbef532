"""Environment databases without a server: names, chunk boundaries, the canonical row encoding,
view rewriting, schema refusals and backup verification on hand-made backup directories."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import re
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cidemo_infra.backups import backup
from cidemo_infra.backups.backup import (
    BackupError,
    RowDigest,
    decode_row,
    decode_value,
    encode_row,
    encode_value,
    table_file,
    verify_backup,
)
from cidemo_infra.backups.ddl import DdlError, check_create_table
from cidemo_infra.bench.chunked_copy import (
    chunk_rows_for,
    iter_key_ranges,
    key_range,
    rewrite_view,
)
from cidemo_infra.databases.database import (
    DatabaseError,
    ForeignKey,
    Schema,
    Table,
    environment_database,
    grant_database,
    preview_database,
    quote_ident,
    quote_param_ident,
    schema_problems,
    validate_database_name,
    validate_user_name,
)
from cidemo_infra.errors import CidemoError, UsageError
from cidemo_infra.state import StateDir

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("pr", "name"), [(1, "pr_1"), (12, "pr_12"), (99999, "pr_99999")])
def test_preview_database(pr: int, name: str) -> None:
    assert preview_database(pr) == name


@pytest.mark.parametrize("pr", [0, -1, True, "1", 1.0, None])
def test_preview_database_refuses(pr: Any) -> None:
    with pytest.raises(ValueError, match="pull request number"):
        preview_database(pr)


@pytest.mark.parametrize(
    ("env", "name"),
    [("pr-12-ghost", "pr_12_ghost"), ("stage-ghost", "stage_ghost"), ("ghost", "ghost")],
)
def test_environment_database(env: str, name: str) -> None:
    assert environment_database(env) == name


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ("", "not valid"),
        ("Ghost", "not valid"),
        ("pr_12", "not valid"),
        ("pr 12", "not valid"),
        ("ghost;drop", "not valid"),
        ("sys", "system schema"),
        ("information-schema", "system schema"),
        ("a" * 33, "too long"),
    ],
)
def test_environment_database_refuses(env: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        environment_database(env)
    assert isinstance(info.value, CidemoError) and info.value.exit_code == 2


@pytest.mark.parametrize(
    "name", ["", "a" * 65, "Pr_1", "pr-1", "pr_1`", "pr_1 ", "mysql", "performance_schema"]
)
def test_database_names_refused(name: str) -> None:
    with pytest.raises(ValueError):
        validate_database_name(name)


def test_database_names_accepted() -> None:
    assert validate_database_name("a" * 64) == "a" * 64
    assert validate_database_name("pr_1") == "pr_1"


@pytest.mark.parametrize("name", ["root", "haproxy_check", "sst", "a" * 33, "a-b", ""])
def test_user_names_refused(name: str) -> None:
    with pytest.raises(ValueError):
        validate_user_name(name)


def test_identifiers_are_quoted_and_grant_wildcards_escaped() -> None:
    assert quote_ident("a`b") == "`a``b`"
    assert quote_param_ident("50%") == "`50%%`"
    assert grant_database("pr_1") == "`pr\\_1`"


def sqlite_rows(keys: list[tuple[Any, ...]], width: int) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    cols = ", ".join(f"`c{i}`" for i in range(width))
    db.execute(f"CREATE TABLE t ({cols}, PRIMARY KEY ({cols}))")
    db.executemany(f"INSERT INTO t VALUES ({', '.join('?' * width)})", keys)
    return db


def chunks_of(keys: list[tuple[Any, ...]], width: int, size: int) -> list[list[tuple[Any, ...]]]:
    """Run the real range predicates against SQLite; boundaries as the clone computes them."""
    db = sqlite_rows(keys, width)
    pk = [f"c{i}" for i in range(width)]
    order = ", ".join(f"`{c}`" for c in pk)

    def select(lower: Any, upper: Any, limit: int | None = None) -> list[tuple[Any, ...]]:
        where, args = key_range(pk, lower, upper)
        sql = f"SELECT * FROM t WHERE {where.replace('%s', '?')} ORDER BY {order}"
        return db.execute(sql + (f" LIMIT {limit}" if limit else ""), args).fetchall()

    def next_boundary(lower: Any) -> Any:
        window = select(lower, None, size)
        return window[-1] if window else None

    ranges = list(iter_key_ranges(next_boundary))
    return [select(lower, upper) for lower, upper in ranges]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_chunks_cover_every_key_once_and_stay_small(width: int, size: int) -> None:
    keys = sorted(
        {(i % 5, f"k{i % 3}", i)[:width] if width > 1 else (i * 7 % 101,) for i in range(40)}
    )
    chunks = chunks_of(keys, width, size)
    flat = [k for chunk in chunks for k in chunk]
    assert flat == keys
    assert all(0 < len(c) <= size for c in chunks)
    assert len(chunks) == -(-len(keys) // size)


def test_an_empty_table_has_no_chunk() -> None:
    assert chunks_of([], 2, 5) == []


def test_key_range_expands_row_comparisons() -> None:
    sql, args = key_range(["a", "b"], (1, "x"), (3, "y"))
    assert sql == (
        "`a` >= %s AND (`a` > %s OR (`a` = %s AND `b` > %s)) AND "
        "`a` <= %s AND (`a` < %s OR (`a` = %s AND `b` <= %s))"
    )
    assert args == [1, 1, 1, "x", 3, 3, 3, "y"]
    assert key_range(["id"], None, (5,)) == ("`id` <= %s", [5])
    assert key_range(["id"], None, None) == ("1 = 1", [])
    with pytest.raises(ValueError):
        key_range(["a", "b"], (1,), None)


def test_keyset_pagination_stops_when_a_boundary_does_not_advance() -> None:
    with pytest.raises(DatabaseError, match="no progress"):
        list(iter_key_ranges(lambda lower: (1,)))


def test_chunks_shrink_for_wide_rows() -> None:
    assert chunk_rows_for(Table("t", ("id",), ("id",), "InnoDB", 0), 5000) == 5000
    assert chunk_rows_for(Table("t", ("id",), ("id",), "InnoDB", 100), 5000) == 5000
    assert chunk_rows_for(Table("t", ("id",), ("id",), "InnoDB", 1 << 20), 5000) == 8
    assert chunk_rows_for(Table("t", ("id",), ("id",), "InnoDB", 1 << 30), 5000) == 1


def test_schema_problems_name_each_table() -> None:
    schema = Schema(
        "staging",
        (
            Table("ok", ("id",), ("id",), "InnoDB"),
            Table("loose", ("x",), (), "InnoDB"),
            Table("old", ("id",), ("id",), "MyISAM"),
        ),
        ("v",),
        (ForeignKey("ok", "fk", ("x",), "other", "p", ("id",), "RESTRICT", "CASCADE"),),
        ("trigger `tr`",),
    )
    problems = "; ".join(schema_problems(schema, allow_views=True))
    assert "table `loose` has no primary key" in problems
    assert "`old` uses MyISAM" in problems
    assert "references database `other`" in problems
    assert "trigger `tr` is not supported" in problems
    assert "view" not in problems
    assert "view `v`" in "; ".join(schema_problems(schema, allow_views=False))
    assert schema_problems(Schema("s", schema.tables[:1], (), (), ()), False) == []


@pytest.mark.parametrize("qualified", [True, False])
def test_views_are_rewritten_to_the_target_as_invoker(qualified: bool) -> None:
    name = "`staging`.`v`" if qualified else "`v`"
    create = (
        "CREATE ALGORITHM=MERGE DEFINER=`root`@`%` SQL SECURITY DEFINER VIEW "
        f"{name} AS select `staging`.`t`.`id` AS `id` from `staging`.`t` "
        "WITH CASCADED CHECK OPTION"
    )
    assert rewrite_view(create, "staging", "pr_1", "v") == (
        "CREATE ALGORITHM=MERGE SQL SECURITY INVOKER VIEW `pr_1`.`v` AS select "
        "`pr_1`.`t`.`id` AS `id` from `pr_1`.`t` WITH CASCADED CHECK OPTION"
    )
    with pytest.raises(DatabaseError):
        rewrite_view("CREATE TABLE `v` (id int)", "staging", "pr_1", "v")


VALUES: list[Any] = [
    None,
    0,
    -(2**63),
    2**64 - 1,
    "",
    'ünïcødé 🚀 \n \u2028 "quoted"',
    b"",
    b"\x00\xff\n",
    Decimal("0.00"),
    Decimal("-12345678901234567890.123456789"),
    0.1,
    -1e300,
    dt.datetime(2015, 6, 1, 12, 0, 0),
    dt.datetime(2015, 6, 1, 12, 0, 0, 250000),
    dt.date(1000, 1, 1),
    dt.timedelta(hours=-838, minutes=-59, seconds=-59),
    dt.timedelta(microseconds=-1),
    dt.timedelta(hours=838, microseconds=999999),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_round_trip_with_their_type(value: Any) -> None:
    encoded = json.loads(json.dumps(encode_value(value)))
    decoded = decode_value(encoded)
    assert decoded == value and type(decoded) is type(value)
    assert encode_value(decoded) == encoded


def test_the_canonical_line_is_stable() -> None:
    row = [1, None, "é", b"\x01", Decimal("1.50"), dt.datetime(2015, 1, 2, 3, 4, 5), 0.5]
    line = encode_row(row)
    assert (
        line
        == (
            '[1,null,"é",{"b":"AQ=="},{"n":"1.50"},{"dt":"2015-01-02 03:04:05"},{"f":"0.5"}]'
        ).encode()
    )
    assert encode_row(decode_row(line, len(row))) == line
    assert encode_row([Decimal("1.5")]) != encode_row([Decimal("1.50")])
    assert encode_row(["1"]) != encode_row([1])
    assert encode_row([b"a"]) != encode_row(["a"])


@pytest.mark.parametrize(
    "bad",
    [True, 1.5, {"b": "***"}, {"x": "1"}, {"n": "NaN"}, {"dt": "yesterday"}, {"t": "5"}, [1]],
)
def test_decoding_refuses_what_encoding_never_writes(bad: Any) -> None:
    with pytest.raises(ValueError):
        decode_value(bad)


def test_encoding_refuses_unknown_types() -> None:
    with pytest.raises(TypeError):
        encode_value({1, 2})
    with pytest.raises(TypeError):
        encode_value(True)


def test_row_digest_is_sha256_over_lines() -> None:
    digest = RowDigest()
    assert digest.checksum == hashlib.sha256(b"").hexdigest()
    digest.add(b"[1]")
    digest.add(b"[2]")
    assert digest.rows == 2
    assert digest.checksum == hashlib.sha256(b"[1]\n[2]\n").hexdigest()


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (dt.timedelta(seconds=-1), "-0:00:01.000000"),
        (dt.timedelta(hours=838, minutes=59, seconds=59), "838:59:59.000000"),
        (dt.timedelta(microseconds=-1500), "-0:00:00.001500"),
        ("x", "x"),
    ],
)
def test_time_values_keep_their_sign_on_restore(value: Any, literal: str) -> None:
    assert backup._sql_value(value) == literal


def test_table_files_are_single_safe_names() -> None:
    assert table_file("posts") == "posts.jsonl.gz"
    assert table_file("a/b`%") == "a%2Fb%60%25.jsonl.gz"
    assert "/" not in table_file("../../etc")


KEY = b"k" * 43
PLAIN = (  # as MariaDB's SHOW CREATE TABLE prints it
    "CREATE TABLE {} (\n  `id` int(11) NOT NULL,\n  `v` blob DEFAULT NULL,\n"
    "  PRIMARY KEY (`id`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
)


def write_backup(
    path: Path, tables: dict[str, list[list[Any]]], key: bytes = KEY, legacy: bool = False
) -> Path:
    """A backup directory in the format backup_database writes (format 1 before backups were
    authenticated), made without a server."""
    path.mkdir(mode=0o700)
    entries = []
    for name, rows in tables.items():
        digest = RowDigest()
        header = {"table": name, "columns": ["id", "v"], "primary_key": ["id"]}
        header["create"] = PLAIN.format(quote_ident(name))
        data = json.dumps(header).encode() + b"\n"
        for row in rows:
            digest.add(encode_row(row))
            data += encode_row(row) + b"\n"
        (path / table_file(name)).write_bytes(gzip.compress(data))
        entry = {"name": name, "rows": digest.rows, "checksum": digest.checksum}
        if not legacy:
            entry |= {"bytes": len(data), **{k: v for k, v in header.items() if k != "table"}}
        entries.append(entry)
    manifest: dict[str, Any] = {"database": "production", "created": "2015-06-01T00:00:00Z"}
    manifest |= {"tables": entries, "format": 1 if legacy else 2}
    if not legacy:
        sign(manifest, key)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def sign(manifest: dict[str, Any], key: bytes = KEY) -> dict[str, Any]:
    """What someone holding the site's backup key can do: authenticate any manifest."""
    manifest["key_id"] = backup.key_id(key)
    manifest["hmac_sha256"] = backup.manifest_mac(manifest, key)
    return manifest


def rewrite(path: Path, change: Any, key: bytes | None = None) -> None:
    """Change a backup's manifest in place; re-sign it with `key` (else the signature stays)."""
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    if key is not None:
        sign(manifest, key)
    (path / "manifest.json").write_text(json.dumps(manifest))


def set_table_file(path: Path, table: str, lines: list[bytes]) -> int:
    """Replace a table file with these lines; returns its decompressed size."""
    data = b"".join(line + b"\n" for line in lines)
    (path / table_file(table)).write_bytes(gzip.compress(data))
    return len(data)


def table_lines(path: Path, table: str) -> list[bytes]:
    return gzip.decompress((path / table_file(table)).read_bytes()).split(b"\n")[:-1]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    rows = [[i, b"\x00" * i + f"row {i}".encode()] for i in range(200)]
    return write_backup(tmp_path / "production-20150601T000000Z", {"posts": rows, "tags": []})


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    rows = [[i, f"row {i}".encode()] for i in range(20)]
    path = tmp_path / "legacy" / "production-20150601T000000Z"
    path.parent.mkdir()
    return write_backup(path, {"posts": rows}, legacy=True)


def test_a_good_backup_verifies(good: Path) -> None:
    manifest = verify_backup(good, KEY)
    assert [(t.name, t.rows) for t in manifest.tables] == [("posts", 200), ("tags", 0)]
    assert manifest.database == "production" and manifest.format == 2
    assert manifest.is_authenticated
    definition = manifest.definition("posts")
    assert definition is not None and definition.create == PLAIN.format("`posts`")


def test_a_flipped_byte_is_refused(good: Path) -> None:
    file = good / "posts.jsonl.gz"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=r"posts\.jsonl\.gz"):
        verify_backup(good, KEY)


def test_a_changed_row_is_refused(good: Path) -> None:
    file = good / "posts.jsonl.gz"
    lines = gzip.decompress(file.read_bytes()).split(b"\n")
    lines[5] = encode_row([4, b"changed"])
    file.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(BackupError, match="'posts' does not match its manifest checksum"):
        verify_backup(good, KEY)


def test_a_changed_row_with_its_checksum_changed_too_fails_authentication(good: Path) -> None:
    """The attack the row checksums alone let through: rows and manifest changed together."""
    lines = table_lines(good, "posts")
    lines[5] = encode_row([4, b"changed"])
    size = set_table_file(good, "posts", lines)
    digest = RowDigest()
    for line in lines[1:]:
        digest.add(line)

    def change(manifest: dict[str, Any]) -> None:
        manifest["tables"][0] |= {"checksum": digest.checksum, "bytes": size}

    rewrite(good, change)
    with pytest.raises(BackupError) as caught:
        verify_backup(good, KEY)
    assert str(caught.value) == (
        f"{good / 'manifest.json'}: authentication failed: the manifest was changed after the "
        "backup was made"
    )


def test_a_backup_of_another_key_is_refused(good: Path) -> None:
    with pytest.raises(
        BackupError, match=r"authenticated with another key \(key id '[0-9a-f]{16}'"
    ):
        verify_backup(good, b"x" * 43)


def test_a_manifest_without_authentication_is_refused(good: Path) -> None:
    rewrite(good, lambda m: m.pop("hmac_sha256"))
    with pytest.raises(BackupError, match="not authenticated"):
        verify_backup(good, KEY)


@pytest.mark.parametrize("mac", ["0" * 64, "é" * 64, ""])
def test_a_forged_mac_fails_authentication(good: Path, mac: str) -> None:
    rewrite(good, lambda m: m.update(hmac_sha256=mac))
    with pytest.raises(BackupError, match="authentication failed"):
        verify_backup(good, KEY)


def test_a_renamed_backup_is_refused(good: Path) -> None:
    renamed = good.with_name("production-20990101T000000Z")
    good.rename(renamed)
    with pytest.raises(BackupError, match="made as 'production-20150601T000000Z'; a renamed"):
        verify_backup(renamed, KEY)


def test_a_header_that_differs_from_the_manifest_is_refused(good: Path) -> None:
    lines = table_lines(good, "posts")
    header = json.loads(lines[0])
    header["create"] = header["create"].replace(
        "ENGINE=InnoDB", "DATA DIRECTORY='/tmp' ENGINE=InnoDB"
    )
    lines[0] = json.dumps(header).encode()
    size = set_table_file(good, "posts", lines)
    rewrite(good, lambda m: m["tables"][0].update(bytes=size), KEY)
    with pytest.raises(BackupError, match="the header differs from the manifest's definition"):
        verify_backup(good, KEY)


@pytest.mark.parametrize(
    ("option", "refusal"),
    [
        ("DATA DIRECTORY='/var/lib/mysql-files'", "table option DATA DIRECTORY is not allowed"),
        ("INDEX DIRECTORY='/tmp'", "table option INDEX DIRECTORY is not allowed"),
        ("CONNECTION='mysql://u@evil/db/t'", "table option CONNECTION is not allowed"),
    ],
)
def test_a_signed_create_table_beyond_a_plain_definition_is_refused(
    good: Path, option: str, refusal: str
) -> None:
    """Even authenticated (a production table someone managed to give such options), a restore
    never runs them as root."""

    def change(manifest: dict[str, Any]) -> None:
        for table in manifest["tables"]:
            table["create"] = table["create"].replace(" ENGINE=InnoDB", f" {option} ENGINE=InnoDB")

    rewrite(good, change, KEY)
    with pytest.raises(BackupError) as caught:
        verify_backup(good, KEY)
    message = str(caught.value)
    assert "\n" not in message and "table 'posts': CREATE TABLE refused: " + refusal in message


def test_a_table_file_longer_than_its_manifest_says_is_refused(good: Path) -> None:
    lines = table_lines(good, "tags")
    set_table_file(good, "tags", [*lines, encode_row([1, b"smuggled"])])
    with pytest.raises(BackupError, match=r"tags\.jsonl\.gz: holds more than the manifest says"):
        verify_backup(good, KEY)


BOMB_MEMBER = "400 KB gzip member, no newline"
BOMB = """
import gzip, resource, sys, zlib
from pathlib import Path
from cidemo_infra.backups.backup import BackupError, verify_backup
path, table, legacy = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
# ~400 MB of one byte, no newline, compressed into one gzip member of about 400 KB
block = b"[" * (1 << 20)
out = zlib.compressobj(9, zlib.DEFLATED, 31)
parts = [out.compress(block) for _ in range(400)] + [out.flush()]
(path / table).write_bytes(b"".join(parts))
print(len(b"".join(parts)))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    verify_backup(path, b"k" * 43, allow_unauthenticated=legacy)
except BackupError as exc:
    print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("kind", ["authenticated", "format 1"])
def test_a_gzip_bomb_without_newline_is_refused_reading_a_bounded_amount(
    good: Path, legacy: Path, kind: str
) -> None:
    """The finding: a 400 KB gzip member with no newline raised peak memory by about 0.9 GiB.
    Measured in a process of its own (its peak resident size, not a time)."""
    import subprocess
    import sys

    path = good if kind == "authenticated" else legacy
    result = subprocess.run(
        [sys.executable, "-c", BOMB, str(path), "posts.jsonl.gz", "1" if path == legacy else "0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    size, message, grown_mib = result.stdout.strip().splitlines()
    assert 300_000 < int(size) < 500_000, BOMB_MEMBER
    expected = (
        r"posts\.jsonl\.gz: holds more than the manifest says \(\d+ bytes decompressed\)"
        if kind == "authenticated"
        else r"posts\.jsonl\.gz: line 1 is longer than 33554432 bytes; refused"
    )
    assert __import__("re").search(expected, message), message
    assert int(grown_mib) < 200, f"peak memory grew by {grown_mib} MiB"


def test_a_format_1_backup_is_refused_unless_allowed(legacy: Path) -> None:
    with pytest.raises(BackupError, match="format 1, made before backups were authenticated"):
        verify_backup(legacy, KEY)
    manifest = verify_backup(legacy, KEY, allow_unauthenticated=True)
    assert manifest.format == 1 and not manifest.is_authenticated
    assert manifest.definition("posts") is None


def test_a_format_1_backup_allowed_still_gets_its_create_table_checked(legacy: Path) -> None:
    lines = table_lines(legacy, "posts")
    header = json.loads(lines[0])
    header["create"] = header["create"].replace("ENGINE=InnoDB", "ENGINE=CONNECT")
    set_table_file(legacy, "posts", [json.dumps(header).encode(), *lines[1:]])
    with pytest.raises(BackupError, match="engine CONNECT: only InnoDB tables are restored"):
        verify_backup(legacy, KEY, allow_unauthenticated=True)


def test_a_truncated_file_is_refused(good: Path) -> None:
    file = good / "posts.jsonl.gz"
    file.write_bytes(file.read_bytes()[:-9])
    with pytest.raises(BackupError, match="damaged"):
        verify_backup(good, KEY)


def test_a_missing_or_extra_file_is_refused(good: Path) -> None:
    (good / "tags.jsonl.gz").rename(good / "other.jsonl.gz")
    with pytest.raises(BackupError, match=r"tags\.jsonl\.gz: missing"):
        verify_backup(good, KEY)
    (good / "tags.jsonl.gz").write_bytes(b"")
    with pytest.raises(BackupError, match=r"other\.jsonl\.gz: not part of the backup"):
        verify_backup(good, KEY)


@pytest.mark.parametrize(
    "change",
    [
        {"format": 3},
        {"tables": "posts"},
        {"tables": [{"name": "posts", "rows": 200}]},
        {"tables": [{"name": "posts", "rows": 1, "checksum": "0" * 64}] * 2},
        {"tables": [{"name": "posts", "rows": -1, "checksum": "0" * 64}]},
        {"created": "not a time"},
    ],
)
def test_a_bad_manifest_is_refused(good: Path, change: dict[str, Any]) -> None:
    """Each change signed with the right key: what the manifest says must make sense too."""
    rewrite(good, lambda m: m.update(change), KEY)
    with pytest.raises(BackupError, match=r"manifest\.json"):
        verify_backup(good, KEY)


def test_the_backup_key_is_generated_once_and_a_short_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state", "unit").ensure()
    monkeypatch.delenv(backup.KEY_ENV, raising=False)
    key = backup.backup_key(state)
    assert len(key) >= 43 and backup.backup_key(state) == key
    assert (state.secrets_dir / "backup_key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv(backup.KEY_ENV, "short")
    with pytest.raises(UsageError, match="the backup key has 5 characters; use at least 32"):
        backup.backup_key(state)


def test_a_missing_manifest_is_refused(good: Path) -> None:
    (good / "manifest.json").unlink()
    with pytest.raises(BackupError, match="not a complete backup"):
        verify_backup(good, KEY)


REAL_CREATE = (  # MariaDB 10.11's SHOW CREATE TABLE of a table with most of what apps use
    "CREATE TABLE `posts` (\n"
    "  `id` bigint(20) unsigned NOT NULL AUTO_INCREMENT,\n"
    "  `author_id` int(11) DEFAULT NULL,\n"
    "  `title` varchar(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT 'it''s',\n"
    "  `price` decimal(12,4) NOT NULL DEFAULT 0.0000 COMMENT 'in EUR; not \\'USD\\'',\n"
    "  `body` longblob DEFAULT NULL,\n"
    "  `created` datetime(6) NOT NULL DEFAULT current_timestamp(6)"
    " ON UPDATE current_timestamp(6),\n"
    "  `kind` enum('a','b') NOT NULL DEFAULT 'a',\n"
    "  `slug` varchar(220) GENERATED ALWAYS AS (lcase(concat(`title`,'-',`id`))) VIRTUAL,\n"
    "  PRIMARY KEY (`id`),\n"
    "  UNIQUE KEY `slug` (`slug`) KEY_BLOCK_SIZE=8,\n"
    "  KEY `author` (`author_id`) USING BTREE COMMENT 'x',\n"
    "  FULLTEXT KEY `title_ft` (`title`),\n"
    "  CONSTRAINT `posts_author` FOREIGN KEY (`author_id`) REFERENCES `authors` (`id`) "
    "ON DELETE SET NULL ON UPDATE CASCADE,\n"
    "  CONSTRAINT `price_positive` CHECK (`price` >= 0 and `price` < 1e9)\n"
    ") ENGINE=InnoDB AUTO_INCREMENT=901 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci "
    "ROW_FORMAT=DYNAMIC COMMENT='posts; not a DATA DIRECTORY'"
)


def test_a_plain_create_table_passes() -> None:
    check_create_table(REAL_CREATE, "posts")
    check_create_table(REAL_CREATE.replace("`price` >= 0", "`price` / -1 <= 0 - 0"), "posts")
    check_create_table(PLAIN.format("`odd``name%`"), "odd`name%")


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ((" ENGINE=", " DATA DIRECTORY='/tmp' ENGINE="), "table option DATA DIRECTORY"),
        ((" ENGINE=", " INDEX DIRECTORY='/tmp' ENGINE="), "table option INDEX DIRECTORY"),
        ((" ENGINE=", " CONNECTION='mysql://x' ENGINE="), "table option CONNECTION"),
        (("ENGINE=InnoDB", "ENGINE=CONNECT"), "engine CONNECT: only InnoDB"),
        (("ENGINE=InnoDB", "ENGINE=FEDERATED"), "engine FEDERATED: only InnoDB"),
        (("ENGINE=InnoDB", "ENGINE=MyISAM"), "engine MyISAM: only InnoDB"),
        (("ENGINE=InnoDB AUTO", "AUTO"), "no ENGINE=InnoDB"),
        (("ENGINE=InnoDB", "ENGINE=InnoDB UNION=(`a`)"), "table option UNION"),
        (("ENGINE=InnoDB", "ENGINE=InnoDB TABLESPACE=`t`"), "table option TABLESPACE"),
        (("ENGINE=InnoDB", "ENGINE=InnoDB WITH SYSTEM VERSIONING"), "table option WITH SYSTEM"),
        (("ROW_FORMAT=DYNAMIC", "PARTITION BY HASH (`id`)"), "table option PARTITION BY"),
        (("'x',\n", "'x' DATA DIRECTORY='/tmp',\n"), "DIRECTORY in a column or index definition"),
        (("REFERENCES `authors`", "REFERENCES `production`.`authors`"), "another database"),
        (("REFERENCES `authors`", "REFERENCES `mysql`.`user`"), "another database"),
        (("`body` longblob", "`body` longblob `ENCRYPTED`=YES"), "option `ENCRYPTED`= in a column"),
        (("lcase(", "load_file("), "LOAD_FILE in a column"),
        (("COMMENT='posts", "COMMENT='posts'; DROP DATABASE `x`; -- "), "';' is not part of"),
        (("'x',\n", "'x' /* y */,\n"), "comments are not part"),
        (("'x',\n", "'x' # y\n,\n"), "'#' is not part of"),
        (("DEFAULT 'a'", 'DEFAULT "a"'), "'\"' is not part of"),
        (("CREATE TABLE `posts`", "CREATE TABLE `other`"), "creates `other`, not table 'posts'"),
        (("CREATE TABLE", "CREATE OR REPLACE TABLE"), "not a CREATE TABLE statement"),
        (("CREATE TABLE", "ALTER TABLE"), "not a CREATE TABLE statement"),
        (("ROW_FORMAT=DYNAMIC", "ROW_FORMAT"), "table option ROW_FORMAT COMMENT is not"),
    ],
)
def test_a_create_table_beyond_a_plain_definition_is_refused(
    change: tuple[str, str], refusal: str
) -> None:
    assert change[0] in REAL_CREATE
    with pytest.raises(DdlError, match=re.escape(refusal)):
        check_create_table(REAL_CREATE.replace(change[0], change[1], 1), "posts")
