"""Consistent database backups and verified, atomic restores: the staging-database refresh.

A backup is a directory `<dest>/<database>-<UTC timestamp>/` (0700) holding `manifest.json` and one
gzip file per table, `<url-quoted table name>.jsonl.gz` (0600). Each table file is JSON lines: a
header object (`table`, `columns`, `primary_key`, `create`: the `SHOW CREATE TABLE` text), then
one array per row in primary-key order. Values are encoded canonically and type-safely: NULL, str
and int as JSON; everything else as a one-key object: `{"b": base64}` bytes, `{"n": "1.50"}`
DECIMAL, `{"f": "0.1"}` float, `{"dt": "2015-06-01 12:00:00.250000"}` DATETIME/TIMESTAMP (read at
time_zone +00:00), `{"d": "2015-06-01"}` DATE, `{"t": microseconds}` TIME. A table's checksum is
sha256 over its canonical row lines, each followed by a newline, in primary-key order; it is
computed the same way from the rows as read in the snapshot, from the files, and from a restored
table, so the three can be compared.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

import pymysql
import pymysql.cursors

from cidemo_infra.databases.database import (
    Table,
    database_exists,
    execute,
    fetch_rows,
    mysql_errors,
    quote_ident,
    quote_param_ident,
    read_schema,
    require_autocommit,
    schema_problems,
    session_settings,
    validate_database_name,
)
from cidemo_infra.errors import CidemoError

FORMAT = 1
MANIFEST = "manifest.json"
BACKUP_NAME = re.compile(r"^[a-z0-9_]{1,64}-[0-9]{8}T[0-9]{6}Z$")
TABLE_SUFFIX = ".jsonl.gz"
CHECKSUM_LENGTH = 64
# a restore batch: one multi-row INSERT (pymysql splits at 1 MB), one small write-set
BATCH_ROWS = 1000
BATCH_BYTES = 1 << 20
# sessions of backup, checksum and restore: TIMESTAMPs in UTC; restore keeps explicit zero ids
# and lets tables load in any order
READ_SESSION: dict[str, str | int] = {"time_zone": "+00:00"}
RESTORE_SESSION: dict[str, str | int] = {
    "time_zone": "+00:00",
    "foreign_key_checks": 0,
    "sql_mode": "NO_AUTO_VALUE_ON_ZERO,STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION",
}
Rows = Iterator[tuple[list[Any], bytes]]  # decoded values and canonical line of each row


class BackupError(CidemoError):
    """A backup or restore was refused or failed; names the file or table."""


@dataclass(frozen=True)
class TableManifest:
    name: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class Manifest:
    database: str
    created: str
    tables: tuple[TableManifest, ...]
    format: int = 1


def encode_value(value: Any) -> Any:
    """One column value as its canonical JSON-able form (see the module docstring)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError("bool is not a column value")
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | bytearray):
        return {"b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Decimal):
        return {"n": str(value)}
    if isinstance(value, float):
        return {"f": repr(value)}
    if isinstance(value, dt.datetime):
        return {"dt": value.isoformat(sep=" ")}
    if isinstance(value, dt.date):
        return {"d": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"t": (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds}
    raise TypeError(f"cannot encode a {type(value).__name__}")


def decode_value(value: Any) -> Any:
    """The inverse of `encode_value`; anything it could not have produced is a ValueError."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"not an encoded value: {value!r:.60}")
    ((tag, raw),) = value.items()
    if tag == "t" and isinstance(raw, int) and not isinstance(raw, bool):
        return dt.timedelta(microseconds=raw)
    if not isinstance(raw, str):
        raise ValueError(f"not an encoded value: {value!r:.60}")
    try:
        if tag == "b":
            return base64.b64decode(raw.encode("ascii"), validate=True)
        if tag == "n":
            number = Decimal(raw)
            if not number.is_finite():
                raise ValueError(raw)
            return number
        if tag == "f":
            return float(raw)
        if tag == "dt":
            return dt.datetime.fromisoformat(raw)
        if tag == "d":
            return dt.date.fromisoformat(raw)
    except (ValueError, InvalidOperation, UnicodeEncodeError) as exc:
        raise ValueError(f"bad {tag!r} value {raw!r:.60}") from exc
    raise ValueError(f"unknown value tag {tag!r}")


def encode_row(values: Sequence[Any]) -> bytes:
    """A row's canonical line (without the newline)."""
    return json.dumps(
        [encode_value(v) for v in values],
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    ).encode("utf-8")


def decode_row(line: bytes, width: int) -> list[Any]:
    row = json.loads(line)
    if not isinstance(row, list) or len(row) != width:
        raise ValueError(f"a row of {width} values expected, got {line[:60]!r}")
    return [decode_value(v) for v in row]


class RowDigest:
    """Row count and sha256 over canonical row lines, in the order given."""

    def __init__(self) -> None:
        self.rows = 0
        self._sha = hashlib.sha256()

    def add(self, line: bytes) -> None:
        self._sha.update(line)
        self._sha.update(b"\n")
        self.rows += 1

    @property
    def checksum(self) -> str:
        return self._sha.hexdigest()


def table_file(name: str) -> str:
    """The file of a table; quoting keeps any table name a single, safe file name."""
    return urllib.parse.quote(name, safe="") + TABLE_SUFFIX


def checksum_table(conn: Any, database: str, table: str) -> TableManifest:
    """Rows and checksum of a table as it is in the database now, computed like a backup's."""
    validate_database_name(database)
    with mysql_errors(f"checksum of {database}.{table}", BackupError):
        found = {t.name: t for t in read_schema(conn, database).tables}
    if table not in found or not found[table].primary_key:
        raise BackupError(
            f"no table {quote_ident(table)} with a primary key in {quote_ident(database)}"
        )
    with (
        mysql_errors(f"checksum of {database}.{table}", BackupError),
        session_settings(conn, READ_SESSION),
    ):
        digest = RowDigest()
        for line in _table_lines(conn, database, found[table]):
            digest.add(line)
    return TableManifest(table, digest.rows, digest.checksum)


def backup_database(conn: Any, database: str, dest_dir: Path) -> Path:
    """Back up `database` consistently (one REPEATABLE READ snapshot for all tables) into
    `<dest_dir>/<database>-<UTC timestamp>/`, which appears only once complete.

    Only base tables are backed up: a database with views, triggers, routines, events, tables
    without primary key or non-InnoDB tables is refused. The snapshot holds metadata locks, so
    schema changes on the database wait until the backup is done.
    """
    validate_database_name(database)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    final = dest_dir / f"{database}-{now:%Y%m%dT%H%M%SZ}"
    if final.exists():
        raise BackupError(f"{final}: exists already; wait a second and retry")
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=dest_dir))
    try:
        with mysql_errors(f"backup of {database}", BackupError):
            if not database_exists(conn, database):
                raise BackupError(f"cannot back up {quote_ident(database)}: it does not exist")
            entries = _dump_tables(conn, database, work)
        manifest = Manifest(database, now.isoformat(timespec="seconds"), tuple(entries), FORMAT)
        _write_file(work / MANIFEST, json.dumps(asdict(manifest), indent=2).encode() + b"\n")
        _fsync_dir(work)
        os.rename(work, final)
        _fsync_dir(dest_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def verify_backup(path: Path) -> Manifest:
    """Check a backup completely: the manifest, exactly the expected files, each gzip stream to
    its end, each row decodable, and rows and checksum recomputed from the files."""
    path = Path(path)
    manifest = _read_manifest(path)
    expected = {MANIFEST} | {table_file(t.name) for t in manifest.tables}
    present = {p.name for p in path.iterdir()}
    missing, extra = sorted(expected - present), sorted(present - expected)
    if missing:
        raise BackupError(f"{path / missing[0]}: missing from the backup")
    if extra:
        raise BackupError(f"{path / extra[0]}: not part of the backup (no table of the manifest)")
    for entry in manifest.tables:
        digest = RowDigest()
        with _table_reader(path, entry.name) as (_, rows):
            for _values, line in rows:
                digest.add(line)
        _compare(entry, digest, f"{path / table_file(entry.name)}")
    return manifest


def restore_database(conn: Any, backup: Path, target: str) -> Manifest:
    """Replace the tables of `target` with the backup's, atomically, or leave `target` as it was.

    Verifies the backup, loads it into a new database `<target>__restore_<ts>`, recomputes each
    table's rows and checksum in the database and compares them with the manifest, and only then
    swaps with one `RENAME TABLE` (all of target's tables out to `<target>__old_<ts>`, all restored
    tables in) and drops the old database. Tables that exist only in the old target therefore
    leave with the rest and are dropped: the target ends with exactly the backup's tables. Views
    of the target stay and read the new tables by name. A target with triggers is refused up front
    (RENAME TABLE cannot move them to another database). The swap is DDL, which Galera runs in
    total order: open transactions of the app on the target's tables are aborted (the app sees a
    deadlock error and retries) rather than delaying it. On any failure the temporary database is
    dropped and the target is not changed.
    """
    validate_database_name(target)
    require_autocommit(conn, "restore_database")
    manifest = verify_backup(Path(backup))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    tmp, old = f"{target}__restore_{stamp}", f"{target}__old_{stamp}"
    if len(old) > 64 or len(tmp) > 64:
        raise BackupError(f"target {target!r} is too long to restore into (at most 40 characters)")
    with mysql_errors(f"restore into {target}", BackupError):
        for name in (tmp, old):
            if database_exists(conn, name):
                raise BackupError(f"{quote_ident(name)} exists: another restore is running")
        if database_exists(conn, target):
            triggers = [o for o in read_schema(conn, target).others if o.startswith("trigger ")]
            if triggers:
                raise BackupError(
                    f"cannot restore into {quote_ident(target)}: it has {', '.join(triggers)}, "
                    "which RENAME TABLE cannot move; drop them first"
                )
        execute(conn, f"CREATE DATABASE {quote_ident(tmp)}{_charset_of(conn, target)}")
        swapped = False
        try:
            with session_settings(conn, RESTORE_SESSION):
                for entry in manifest.tables:
                    _load_table(conn, Path(backup), tmp, entry)
                _check_restored(conn, tmp, manifest)
                swapped = _swap(conn, tmp, old, target, [t.name for t in manifest.tables])
        finally:
            if not swapped:
                with contextlib.suppress(pymysql.MySQLError):
                    execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(tmp)}")
        execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(old)}")
        execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(tmp)}")
    return manifest


def _dump_tables(conn: Any, database: str, work: Path) -> list[TableManifest]:
    with session_settings(conn, READ_SESSION):
        execute(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        execute(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        try:
            schema = read_schema(conn, database)
            problems = schema_problems(schema, allow_views=False)
            if problems:
                raise BackupError(f"cannot back up {quote_ident(database)}: {'; '.join(problems)}")
            return [_dump_table(conn, database, table, work) for table in schema.tables]
        finally:
            with contextlib.suppress(pymysql.MySQLError):
                execute(conn, "ROLLBACK")


def _dump_table(conn: Any, database: str, table: Table, work: Path) -> TableManifest:
    create = fetch_rows(
        conn, f"SHOW CREATE TABLE {quote_ident(database)}.{quote_ident(table.name)}"
    )
    header = {
        "table": table.name,
        "columns": list(table.columns),
        "primary_key": list(table.primary_key),
        "create": create[0][1],
    }
    digest = RowDigest()
    path = work / table_file(table.name)
    with (
        _private_file(path) as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out,
    ):
        out.write(json.dumps(header, ensure_ascii=False).encode("utf-8") + b"\n")
        for line in _table_lines(conn, database, table):
            digest.add(line)
            out.write(line + b"\n")
    return TableManifest(table.name, digest.rows, digest.checksum)


def _table_lines(conn: Any, database: str, table: Table) -> Iterator[bytes]:
    """The table's canonical row lines in primary-key order, streamed from the server."""
    cols = ", ".join(quote_ident(c) for c in table.columns)
    pk = ", ".join(quote_ident(c) for c in table.primary_key)
    cur = conn.cursor(pymysql.cursors.SSCursor)
    try:
        cur.execute(
            f"SELECT {cols} FROM {quote_ident(database)}.{quote_ident(table.name)} ORDER BY {pk}"
        )
        for row in cur:
            try:
                yield encode_row(row)
            except TypeError as exc:
                raise BackupError(f"table {quote_ident(table.name)}: {exc}") from exc
    finally:
        cur.close()


def _read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST
    try:
        data = json.loads(file.read_bytes())
        tables = tuple(
            TableManifest(str(t["name"]), int(t["rows"]), str(t["checksum"]))
            for t in data["tables"]
        )
        manifest = Manifest(str(data["database"]), str(data["created"]), tables, data["format"])
    except FileNotFoundError as exc:
        raise BackupError(f"{file}: missing; {path} is not a complete backup") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{file}: unreadable ({exc})") from exc
    if manifest.format != FORMAT:
        raise BackupError(f"{file}: format {manifest.format!r}, this version reads {FORMAT}")
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise BackupError(f"{file}: a table is listed twice")
    for t in tables:
        if t.rows < 0 or len(t.checksum) != CHECKSUM_LENGTH:
            raise BackupError(f"{file}: table {t.name!r} has a bad row count or checksum")
    return manifest


@contextlib.contextmanager
def _table_reader(path: Path, table: str) -> Iterator[tuple[dict[str, Any], Rows]]:
    """A table file's header and its rows: decoded values and canonical line. Any damage is a
    BackupError naming the file (gzip checks CRC and length when the stream reaches its end)."""
    file = path / table_file(table)

    def rows(fh: Iterable[bytes], width: int) -> Rows:
        for number, raw in enumerate(fh, start=2):
            try:
                values = decode_row(raw, width)
                yield values, encode_row(values)
            except (ValueError, TypeError) as exc:
                raise BackupError(f"{file}: line {number} of table {table!r}: {exc}") from exc

    try:
        with gzip.open(file, "rb") as fh:
            header = json.loads(fh.readline())
            if not isinstance(header, dict) or header.get("table") != table:
                raise BackupError(f"{file}: the header does not name table {table!r}")
            columns = header.get("columns")
            if (
                not isinstance(columns, list)
                or not columns
                or not isinstance(header.get("create"), str)
            ):
                raise BackupError(f"{file}: the header lacks columns or a CREATE TABLE")
            yield header, rows(fh, len(columns))
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise BackupError(f"{file}: damaged or unreadable ({exc})") from exc


def _compare(entry: TableManifest, got: RowDigest, where: str) -> None:
    if got.rows != entry.rows:
        raise BackupError(
            f"{where}: table {entry.name!r} has {got.rows} rows, the manifest says {entry.rows}"
        )
    if got.checksum != entry.checksum:
        raise BackupError(f"{where}: table {entry.name!r} does not match its manifest checksum")


def _load_table(conn: Any, backup: Path, tmp: str, entry: TableManifest) -> None:
    digest = RowDigest()
    with _table_reader(backup, entry.name) as (header, rows):
        prefix = f"CREATE TABLE {quote_ident(entry.name)} ("
        if not header["create"].startswith(prefix):
            raise BackupError(f"{backup / table_file(entry.name)}: unexpected CREATE TABLE")
        execute(
            conn,
            f"CREATE TABLE {quote_ident(tmp)}.{quote_ident(entry.name)} ("
            + header["create"][len(prefix) :],
        )
        columns = [str(c) for c in header["columns"]]
        insert = (
            f"INSERT INTO {quote_param_ident(tmp)}.{quote_param_ident(entry.name)} "
            f"({', '.join(quote_param_ident(c) for c in columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})"
        )
        for batch in _batches(rows, digest):
            with conn.cursor() as cur:
                cur.executemany(insert, batch)
    # the file is read again here: compare what was loaded, not what verify_backup saw
    _compare(entry, digest, f"{backup / table_file(entry.name)}")


def _batches(rows: Rows, digest: RowDigest) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    size = 0
    for values, line in rows:
        digest.add(line)
        batch.append(tuple(_sql_value(v) for v in values))
        size += len(line)
        if len(batch) >= BATCH_ROWS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _sql_value(value: Any) -> Any:
    """A decoded value as pymysql should send it; TIME goes as text so its sign is never lost."""
    if isinstance(value, dt.timedelta):
        micros = abs(value) // dt.timedelta(microseconds=1)
        seconds, micro = divmod(micros, 1_000_000)
        sign = "-" if value < dt.timedelta(0) else ""
        return f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{micro:06d}"
    return value


def _check_restored(conn: Any, tmp: str, manifest: Manifest) -> None:
    schema = read_schema(conn, tmp)
    tables = {t.name: t for t in schema.tables}
    if set(tables) != {t.name for t in manifest.tables} or schema.views or schema.others:
        raise BackupError(f"{quote_ident(tmp)}: holds other objects than the backup's tables")
    for entry in manifest.tables:
        digest = RowDigest()
        for line in _table_lines(conn, tmp, tables[entry.name]):
            digest.add(line)
        _compare(entry, digest, f"restored {quote_ident(tmp)}")


def _swap(conn: Any, tmp: str, old: str, target: str, tables: Sequence[str]) -> bool:
    """One RENAME TABLE moves the target's tables out and the restored ones in."""
    moves, made = [], ""
    if database_exists(conn, target):
        current = [t.name for t in read_schema(conn, target).tables]
        if current:
            made = old
            moves += [
                f"{quote_ident(target)}.{quote_ident(t)} TO {quote_ident(old)}.{quote_ident(t)}"
                for t in current
            ]
    else:
        made = target
    if made:
        execute(conn, f"CREATE DATABASE {quote_ident(made)}{_charset_of(conn, tmp)}")
    moves += [
        f"{quote_ident(tmp)}.{quote_ident(t)} TO {quote_ident(target)}.{quote_ident(t)}"
        for t in tables
    ]
    try:
        execute(conn, "RENAME TABLE " + ", ".join(moves))
    except pymysql.MySQLError:
        if made:
            with contextlib.suppress(pymysql.MySQLError):
                execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(made)}")
        raise
    return True


def _charset_of(conn: Any, database: str) -> str:
    found = fetch_rows(
        conn,
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
        "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (database,),
    )
    if not found:
        return ""
    charset, collation = found[0]
    return f" CHARACTER SET {quote_ident(charset)} COLLATE {quote_ident(collation)}"


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[IO[bytes]]:
    """A new file, 0600 from its creation, flushed to disk when the block ends."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def _write_file(path: Path, data: bytes) -> None:
    with _private_file(path) as fh:
        fh.write(data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
