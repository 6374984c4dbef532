"""Consistent database backups and verified, atomic restores: the staging-database refresh.

A backup is a directory `<dest>/<database>-<UTC timestamp>/` (0700) holding `manifest.json` and one
gzip file per table, `<url-quoted table name>.jsonl.gz` (0600). Each table file is JSON lines: a
header object (`table`, `columns`, `primary_key`, `create`: the `SHOW CREATE TABLE` text), then
one array per row in primary-key order; every line ends with a newline and is at most
`MAX_LINE_BYTES` long.

The manifest (format 2) lists per table its rows, checksum, decompressed size (`bytes`) and the
header's `columns`, `primary_key` and `create`, and is authenticated: `hmac_sha256` is HMAC-SHA256,
under the site's backup key (`secrets/backup_key`, or CIDEMO_BACKUP_KEY), of the canonical JSON of
everything else in it (`key_id` names the key). A restore checks that before it reads any table
file, runs only the manifest's `CREATE TABLE` (which must be a plain InnoDB table definition, see
`backups.ddl`), reads no more of a table file than the manifest's size, and refuses a backup whose
name is not its manifest's database and time. Format-1 backups (no authentication, no sizes) are
refused unless the caller allows them explicitly; their files may then expand at most
`LEGACY_EXPANSION` times. Values are encoded canonically and type-safely: NULL, str
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
import hmac
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

import pymysql
import pymysql.cursors

from cidemo_infra.backups.ddl import DdlError, check_create_table
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
from cidemo_infra.errors import CidemoError, UsageError
from cidemo_infra.state import StateDir

FORMAT = 2
LEGACY_FORMAT = 1  # before backups were authenticated
MANIFEST = "manifest.json"
KEY_SECRET = "backup_key"
KEY_ENV = "CIDEMO_BACKUP_KEY"
KEY_MIN_LENGTH = 32
MAC_FIELD = "hmac_sha256"
MAC_CONTEXT = b"cidemo backup manifest 2\n"
MAX_MANIFEST_BYTES = 16 << 20
MAX_LINE_BYTES = 32 << 20  # a row of MariaDB's default max_allowed_packet (16 MiB), as base64
LEGACY_EXPANSION = 200  # format 1: decompressed at most 200 times the file (plus one line)
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
class TableDefinition:
    """A table file's header as the manifest authenticates it, and the file's decompressed size
    (0: unknown, a format-1 backup)."""

    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    create: str
    size: int = 0


@dataclass(frozen=True)
class Manifest:
    database: str
    created: str
    tables: tuple[TableManifest, ...]
    format: int = FORMAT
    definitions: tuple[TableDefinition, ...] = ()  # one per table; empty in format 1

    @property
    def is_authenticated(self) -> bool:
        return self.format == FORMAT

    def definition(self, table: str) -> TableDefinition | None:
        if not self.definitions:
            return None
        return self.definitions[[t.name for t in self.tables].index(table)]


def backup_key(state: StateDir) -> bytes:
    """The site's backup key: CIDEMO_BACKUP_KEY, else `secrets/backup_key` (made once, 256 bits)."""
    value = state.secret(KEY_SECRET, KEY_ENV, nbytes=32)
    if len(value) < KEY_MIN_LENGTH:
        raise UsageError(
            f"{KEY_ENV} (or {state.secrets_dir / KEY_SECRET}): the backup key has {len(value)} "
            f"characters; use at least {KEY_MIN_LENGTH} random ones"
        )
    return value.encode()


def key_id(key: bytes) -> str:
    """Which key authenticated a manifest, without revealing it."""
    return hashlib.sha256(b"cidemo backup key id\n" + key).hexdigest()[:16]


def manifest_mac(body: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of a manifest: its canonical JSON without `hmac_sha256`."""
    data = {k: v for k, v in body.items() if k != MAC_FIELD}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, MAC_CONTEXT + canonical.encode("ascii"), hashlib.sha256).hexdigest()


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


def backup_database(conn: Any, database: str, dest_dir: Path, key: bytes) -> Path:
    """Back up `database` consistently (one REPEATABLE READ snapshot for all tables) into
    `<dest_dir>/<database>-<UTC timestamp>/`, which appears only once complete; its manifest is
    authenticated with `key`.

    Only base tables are backed up: a database with views, triggers, routines, events, tables
    without primary key, non-InnoDB tables, tables whose CREATE TABLE a restore would refuse, or
    rows longer than MAX_LINE_BYTES as a line is refused. The snapshot holds metadata locks, so
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
        body: dict[str, Any] = {
            "format": FORMAT,
            "database": database,
            "created": now.isoformat(timespec="seconds"),
            "key_id": key_id(key),
            "tables": [
                {
                    **asdict(entry),
                    "bytes": definition.size,
                    "columns": list(definition.columns),
                    "primary_key": list(definition.primary_key),
                    "create": definition.create,
                }
                for entry, definition in entries
            ],
        }
        body[MAC_FIELD] = manifest_mac(body, key)
        _write_file(work / MANIFEST, json.dumps(body, indent=2).encode() + b"\n")
        _fsync_dir(work)
        os.rename(work, final)
        _fsync_dir(dest_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def verify_backup(path: Path, key: bytes, *, allow_unauthenticated: bool = False) -> Manifest:
    """Check a backup completely: the manifest's authentication (with `key`; a format-1 backup
    has none and is refused unless `allow_unauthenticated`), its name, each CREATE TABLE,
    exactly the expected files, each gzip stream to its end within its size, each row decodable,
    and rows and checksum recomputed from the files."""
    path = Path(path)
    manifest = _read_manifest(path, key, allow_unauthenticated)
    expected = {MANIFEST} | {table_file(t.name) for t in manifest.tables}
    present = {p.name for p in path.iterdir()}
    missing, extra = sorted(expected - present), sorted(present - expected)
    if missing:
        raise BackupError(f"{path / missing[0]}: missing from the backup")
    if extra:
        raise BackupError(f"{path / extra[0]}: not part of the backup (no table of the manifest)")
    for entry in manifest.tables:
        digest = RowDigest()
        with _table_reader(path, entry.name, manifest.definition(entry.name)) as (_, rows):
            for _values, line in rows:
                digest.add(line)
        _compare(entry, digest, f"{path / table_file(entry.name)}")
    return manifest


def restore_database(
    conn: Any, backup: Path, target: str, key: bytes, *, allow_unauthenticated: bool = False
) -> Manifest:
    """Replace the tables of `target` with the backup's, atomically, or leave `target` as it was.

    Verifies the backup (`verify_backup`, with `key`), loads it into a new database
    `<target>__restore_<ts>`, recomputes each table's rows and checksum in the database and compares
    them with the manifest, and only then swaps with one `RENAME TABLE` (all of target's tables out
    to `<target>__old_<ts>`, all restored tables in) and drops the old database. Tables that exist
    only in the old target therefore leave with the rest and are dropped: the target ends with
    exactly the backup's tables. Views of the target stay and read the new tables by name. A target
    with triggers is refused up front (RENAME TABLE cannot move them to another database). The swap
    is DDL, which Galera runs in total order: open transactions of the app on the target's tables
    are aborted (the app sees a deadlock error and retries) rather than delaying it. On any failure
    the temporary database is dropped and the target is not changed.
    """
    validate_database_name(target)
    require_autocommit(conn, "restore_database")
    manifest = verify_backup(Path(backup), key, allow_unauthenticated=allow_unauthenticated)
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
                    _load_table(conn, Path(backup), tmp, entry, manifest.definition(entry.name))
                _check_restored(conn, tmp, manifest)
                swapped = _swap(conn, tmp, old, target, [t.name for t in manifest.tables])
        finally:
            if not swapped:
                with contextlib.suppress(pymysql.MySQLError):
                    execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(tmp)}")
        execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(old)}")
        execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(tmp)}")
    return manifest


def _dump_tables(
    conn: Any, database: str, work: Path
) -> list[tuple[TableManifest, TableDefinition]]:
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


def _dump_table(
    conn: Any, database: str, table: Table, work: Path
) -> tuple[TableManifest, TableDefinition]:
    where = f"{quote_ident(database)}.{quote_ident(table.name)}"
    create = str(fetch_rows(conn, f"SHOW CREATE TABLE {where}")[0][1])
    try:
        check_create_table(create, table.name)
    except DdlError as exc:
        raise BackupError(
            f"cannot back up {where}: its CREATE TABLE is not a plain InnoDB table definition "
            f"({exc}), which a restore refuses"
        ) from None
    header = {
        "table": table.name,
        "columns": list(table.columns),
        "primary_key": list(table.primary_key),
        "create": create,
    }
    digest = RowDigest()
    path = work / table_file(table.name)
    size = 0
    with (
        _private_file(path) as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out,
    ):
        first = json.dumps(header, ensure_ascii=False).encode("utf-8")
        for number, line in enumerate(_with_header(first, digest, conn, database, table), 1):
            if len(line) + 1 > MAX_LINE_BYTES:
                raise BackupError(
                    f"cannot back up {where}: line {number} of its file would be "
                    f"{len(line) + 1} bytes, more than a restore reads ({MAX_LINE_BYTES})"
                )
            out.write(line + b"\n")
            size += len(line) + 1
    definition = TableDefinition(tuple(table.columns), tuple(table.primary_key), create, size)
    return TableManifest(table.name, digest.rows, digest.checksum), definition


def _with_header(
    header: bytes, digest: RowDigest, conn: Any, database: str, table: Table
) -> Iterator[bytes]:
    """The header line, then the row lines (counted into `digest`)."""
    yield header
    for line in _table_lines(conn, database, table):
        digest.add(line)
        yield line


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


def _read_manifest(path: Path, key: bytes, allow_unauthenticated: bool) -> Manifest:
    """The manifest, authenticated (format 2) before anything in it is used."""
    file = path / MANIFEST
    try:
        with file.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BackupError(f"{file}: larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
    except FileNotFoundError as exc:
        raise BackupError(f"{file}: missing; {path} is not a complete backup") from exc
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise BackupError(f"{file}: unreadable ({str(exc)[:120]})") from None
    version = data.get("format")
    if version == LEGACY_FORMAT:
        if not allow_unauthenticated:
            raise BackupError(
                f"{file}: format 1, made before backups were authenticated; refused (restore it "
                "only from a store you trust, with --allow-unauthenticated)"
            )
    elif version == FORMAT:
        _authenticate(file, data, key)
    else:
        raise BackupError(f"{file}: format {version!r:.20}, this version reads {FORMAT}")
    try:
        manifest = _parse_manifest(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{file}: unreadable ({str(exc)[:120]})") from None
    names = [t.name for t in manifest.tables]
    if len(set(names)) != len(names):
        raise BackupError(f"{file}: a table is listed twice")
    for t in manifest.tables:
        if t.rows < 0 or not re.fullmatch(f"[0-9a-f]{{{CHECKSUM_LENGTH}}}", t.checksum):
            raise BackupError(f"{file}: table {t.name!r:.80} has a bad row count or checksum")
    made_as = _backup_name(manifest)
    if made_as != path.name:
        raise BackupError(
            f"{file}: the backup was made as {made_as!r:.100}; a renamed backup is refused"
        )
    for t, definition in zip(manifest.tables, manifest.definitions, strict=False):
        _check_definition(file, t.name, definition)
    return manifest


def _authenticate(file: Path, data: dict[str, Any], key: bytes) -> None:
    found, mac = data.get("key_id"), data.get(MAC_FIELD)
    if not isinstance(mac, str) or not isinstance(found, str):
        raise BackupError(f"{file}: not authenticated (no {MAC_FIELD} or key_id)")
    if found != key_id(key):
        raise BackupError(
            f"{file}: authenticated with another key (key id {found[:16]!r}, this site's is "
            f"{key_id(key)!r}): made by another site, or before secrets/{KEY_SECRET} changed"
        )
    if not hmac.compare_digest(mac.encode(), manifest_mac(data, key).encode()):
        raise BackupError(
            f"{file}: authentication failed: the manifest was changed after the backup was made"
        )


def _parse_manifest(data: dict[str, Any]) -> Manifest:
    tables, definitions = [], []
    for t in data["tables"]:
        tables.append(TableManifest(_text(t["name"]), _count(t["rows"]), _text(t["checksum"])))
        if data["format"] == FORMAT:
            definitions.append(
                TableDefinition(
                    _names(t["columns"]),
                    _names(t["primary_key"]),
                    _text(t["create"]),
                    _count(t["bytes"]),
                )
            )
    return Manifest(
        _text(data["database"]),
        _text(data["created"]),
        tuple(tables),
        data["format"],
        tuple(definitions),
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r:.40} is not a string")
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{value!r:.40} is not a count")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise TypeError(f"{value!r:.40} is not a list of names")
    return tuple(_text(v) for v in value)


def _backup_name(manifest: Manifest) -> str:
    """The name a backup of the manifest's database and time has (BACKUP_NAME)."""
    try:
        created = dt.datetime.fromisoformat(manifest.created).astimezone(dt.UTC)
    except ValueError:
        return f"{manifest.database}-{manifest.created}"
    return f"{manifest.database}-{created:%Y%m%dT%H%M%SZ}"


def _check_definition(file: Path, table: str, definition: TableDefinition) -> None:
    """A table's header as a restore will use it: its CREATE TABLE plain, its key in it."""
    try:
        check_create_table(definition.create, table)
    except DdlError as exc:
        raise BackupError(
            f"{file}: table {table!r:.80}: CREATE TABLE refused: {exc} (a restore runs only "
            "plain InnoDB table definitions)"
        ) from None
    if not set(definition.primary_key) <= set(definition.columns):
        raise BackupError(f"{file}: table {table!r:.80}: its primary key is not among its columns")


def _bounded_lines(fh: gzip.GzipFile, file: Path, limit: int, what: str) -> Iterator[bytes]:
    """The lines of a decompressed stream, none longer than MAX_LINE_BYTES, all together no more
    than `limit` bytes: reading stops there, so no file can make the reader hold more."""
    read = 0
    number = 0
    while True:
        raw = fh.readline(min(MAX_LINE_BYTES, limit - read) + 1)
        if not raw:
            return
        number += 1
        read += len(raw)
        if read > limit:
            raise BackupError(f"{file}: holds more than {what} ({limit} bytes decompressed)")
        if not raw.endswith(b"\n"):
            if len(raw) > MAX_LINE_BYTES:
                raise BackupError(
                    f"{file}: line {number} is longer than {MAX_LINE_BYTES} bytes; refused"
                )
            raise BackupError(f"{file}: line {number} is cut off (no newline at the end)")
        yield raw[:-1]


@contextlib.contextmanager
def _table_reader(
    path: Path, table: str, expected: TableDefinition | None
) -> Iterator[tuple[TableDefinition, Rows]]:
    """A table file's definition (`expected`, the authenticated manifest's, which the header
    must repeat; or for format 1 the header's own, checked) and its rows: decoded values and
    canonical line. Any damage is a BackupError naming the file (gzip checks CRC and length
    when the stream reaches its end). The file is read only up to the manifest's size."""
    file = path / table_file(table)

    def rows(lines: Iterator[bytes], width: int) -> Rows:
        for number, raw in enumerate(lines, start=2):
            try:
                values = decode_row(raw, width)
                yield values, encode_row(values)
            except (ValueError, TypeError, RecursionError) as exc:
                raise BackupError(
                    f"{file}: line {number} of table {table!r}: {str(exc)[:160]}"
                ) from None
        if expected is not None and read_all() != expected.size:
            raise BackupError(f"{file}: shorter than the manifest says ({expected.size} bytes)")

    try:
        with gzip.open(file, "rb") as fh:
            if expected is not None:
                limit, what = expected.size, "the manifest says"
            else:
                limit = LEGACY_EXPANSION * file.stat().st_size + MAX_LINE_BYTES
                what = f"{LEGACY_EXPANSION} times its size"
            counted = _Counted(_bounded_lines(fh, file, limit, what))
            read_all = counted.total
            header = json.loads(next(counted, b""))
            if not isinstance(header, dict) or header.get("table") != table:
                raise BackupError(f"{file}: the header does not name table {table!r}")
            columns = header.get("columns")
            if (
                not isinstance(columns, list)
                or not columns
                or not isinstance(header.get("create"), str)
            ):
                raise BackupError(f"{file}: the header lacks columns or a CREATE TABLE")
            if expected is None:
                definition = TableDefinition(
                    _names(columns), _names(header.get("primary_key")), header["create"]
                )
                _check_definition(file, table, definition)
            else:
                definition = expected
                found = (tuple(columns), tuple(header.get("primary_key") or ()), header["create"])
                if found != (expected.columns, expected.primary_key, expected.create):
                    raise BackupError(
                        f"{file}: the header differs from the manifest's definition of {table!r}"
                    )
            yield definition, rows(counted, len(columns))
    except (OSError, EOFError, zlib.error, ValueError, TypeError, RecursionError) as exc:
        raise BackupError(f"{file}: damaged or unreadable ({str(exc)[:160]})") from None


class _Counted:
    """Lines passed through, with the bytes (newlines included) they held."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = next(self._lines)
        self._bytes += len(line) + 1
        return line

    def total(self) -> int:
        return self._bytes


def _compare(entry: TableManifest, got: RowDigest, where: str) -> None:
    if got.rows != entry.rows:
        raise BackupError(
            f"{where}: table {entry.name!r} has {got.rows} rows, the manifest says {entry.rows}"
        )
    if got.checksum != entry.checksum:
        raise BackupError(f"{where}: table {entry.name!r} does not match its manifest checksum")


def _load_table(
    conn: Any, backup: Path, tmp: str, entry: TableManifest, expected: TableDefinition | None
) -> None:
    digest = RowDigest()
    with _table_reader(backup, entry.name, expected) as (definition, rows):
        prefix = f"CREATE TABLE {quote_ident(entry.name)} ("
        if not definition.create.startswith(prefix):
            raise BackupError(f"{backup / table_file(entry.name)}: unexpected CREATE TABLE")
        execute(
            conn,
            f"CREATE TABLE {quote_ident(tmp)}.{quote_ident(entry.name)} ("
            + definition.create[len(prefix) :],
        )
        columns = list(definition.columns)
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
