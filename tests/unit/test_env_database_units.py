"""Environment databases without a server: names, chunk boundaries, the canonical row encoding,
view rewriting, schema refusals and backup verification on hand-made backup directories."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
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
from cidemo_infra.databases.database import (
    DatabaseError,
    ForeignKey,
    Schema,
    Table,
    chunk_rows_for,
    environment_database,
    grant_database,
    iter_key_ranges,
    key_range,
    preview_database,
    quote_ident,
    quote_param_ident,
    rewrite_view,
    schema_problems,
    validate_database_name,
    validate_user_name,
)
from cidemo_infra.errors import CidemoError

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


def write_backup(path: Path, tables: dict[str, list[list[Any]]]) -> Path:
    """A backup directory in the format backup_database writes, made without a server."""
    path.mkdir(mode=0o700)
    entries = []
    for name, rows in tables.items():
        digest = RowDigest()
        with gzip.open(path / table_file(name), "wb") as out:
            header = {"table": name, "columns": ["id", "v"], "primary_key": ["id"]}
            header["create"] = f"CREATE TABLE {quote_ident(name)} (id int primary key, v blob)"
            out.write(json.dumps(header).encode() + b"\n")
            for row in rows:
                digest.add(encode_row(row))
                out.write(encode_row(row) + b"\n")
        entries.append({"name": name, "rows": digest.rows, "checksum": digest.checksum})
    manifest: dict[str, Any] = {"database": "production", "created": "2015-06-01T00:00:00Z"}
    manifest |= {"tables": entries, "format": 1}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    rows = [[i, b"\x00" * i + f"row {i}".encode()] for i in range(200)]
    return write_backup(tmp_path / "production-20150601T000000Z", {"posts": rows, "tags": []})


def test_a_good_backup_verifies(good: Path) -> None:
    manifest = verify_backup(good)
    assert [(t.name, t.rows) for t in manifest.tables] == [("posts", 200), ("tags", 0)]
    assert manifest.database == "production" and manifest.format == 1


def test_a_flipped_byte_is_refused(good: Path) -> None:
    file = good / "posts.jsonl.gz"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=r"posts\.jsonl\.gz"):
        verify_backup(good)


def test_a_changed_row_is_refused(good: Path) -> None:
    file = good / "posts.jsonl.gz"
    lines = gzip.decompress(file.read_bytes()).split(b"\n")
    lines[5] = encode_row([4, b"changed"])
    file.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(BackupError, match="'posts' does not match its manifest checksum"):
        verify_backup(good)


def test_a_truncated_file_is_refused(good: Path) -> None:
    file = good / "posts.jsonl.gz"
    file.write_bytes(file.read_bytes()[:-9])
    with pytest.raises(BackupError, match="damaged"):
        verify_backup(good)


def test_a_missing_or_extra_file_is_refused(good: Path) -> None:
    (good / "tags.jsonl.gz").rename(good / "other.jsonl.gz")
    with pytest.raises(BackupError, match=r"tags\.jsonl\.gz: missing"):
        verify_backup(good)
    (good / "tags.jsonl.gz").write_bytes(b"")
    with pytest.raises(BackupError, match=r"other\.jsonl\.gz: not part of the backup"):
        verify_backup(good)


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"tables": "posts"},
        {"tables": [{"name": "posts", "rows": 200}]},
        {"tables": [{"name": "posts", "rows": 1, "checksum": "0" * 64}] * 2},
        {"tables": [{"name": "posts", "rows": -1, "checksum": "0" * 64}]},
    ],
)
def test_a_bad_manifest_is_refused(good: Path, change: dict[str, Any]) -> None:
    manifest = json.loads((good / "manifest.json").read_text()) | change
    (good / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=r"manifest\.json"):
        verify_backup(good)


def test_a_missing_manifest_is_refused(good: Path) -> None:
    (good / "manifest.json").unlink()
    with pytest.raises(BackupError, match="not a complete backup"):
        verify_backup(good)
