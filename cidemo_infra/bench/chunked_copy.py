"""The chunked server-side copy previews used before branches: a baseline for `make bench` only.

Until snapshots and branches (`databases/snapshots.py`, `databases/branches.py`) replaced it, a
preview's database was a copy of staging's made on the Galera cluster, chunk by chunk, every row
applied on every member. It is kept here, out of the product, so the bench can measure branches
against it in the same run.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

from cidemo_infra.databases.database import (
    DatabaseError,
    ForeignKey,
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

# A write-set well under gcache.size (256M in the image) keeps certification and IST cheap.
MAX_CHUNK_BYTES = 8 << 20
ER_NO_SUCH_TABLE = 1146

Key = tuple[Any, ...]


@dataclass(frozen=True)
class CloneStats:
    tables: int
    rows: int
    chunks: int
    seconds: float


def key_range(
    primary_key: Sequence[str], lower: Key | None, upper: Key | None
) -> tuple[str, list[Any]]:
    """The predicate `lower < pk <= upper` over a (composite) primary key, expanded into
    comparisons the optimizer turns into an index range (MariaDB scans the whole table for a row
    constructor like `(a, b) > (1, 2)`); a leading-column bound narrows the range further."""
    parts: list[str] = []
    args: list[Any] = []
    cols = [quote_param_ident(c) for c in primary_key]
    # (bound, comparison on a leading column, on the last column, on the first column alone)
    for bound, strict, last, leading in ((lower, ">", ">", ">="), (upper, "<", "<=", "<=")):
        if bound is None:
            continue
        if len(bound) != len(cols):
            raise ValueError(f"key {bound!r} does not match primary key {list(primary_key)}")
        expr, expr_args = f"{cols[-1]} {last} %s", [bound[-1]]
        for col, value in zip(reversed(cols[:-1]), reversed(bound[:-1]), strict=True):
            expr = f"({col} {strict} %s OR ({col} = %s AND {expr}))"
            expr_args = [value, value, *expr_args]
        if len(cols) > 1:
            parts.append(f"{cols[0]} {leading} %s AND {expr}")
            args += [bound[0], *expr_args]
        else:
            parts.append(expr)
            args += expr_args
    return (" AND ".join(parts) or "1 = 1"), args


def iter_key_ranges(
    next_boundary: Callable[[Key | None], Key | None],
) -> Iterator[tuple[Key | None, Key]]:
    """Keyset pagination: (lower, upper] ranges, each ending at the last key of the next window
    after `lower`, until a window comes back empty."""
    lower: Key | None = None
    while (upper := next_boundary(lower)) is not None:
        if upper == lower:
            raise DatabaseError(f"chunking made no progress at key {upper!r}")
        yield lower, upper
        lower = upper


def chunk_rows_for(table: Table, chunk_rows: int) -> int:
    """At most `chunk_rows` rows, fewer for wide rows so a chunk's write-set stays small."""
    if table.avg_row_length <= 0:
        return chunk_rows
    return max(1, min(chunk_rows, MAX_CHUNK_BYTES // table.avg_row_length))


def clone_database(conn: Any, source: str, target: str, chunk_rows: int = 5000) -> CloneStats:
    """Copy `source` into a new database `target`, entirely on the server.

    Refuses (before creating anything) a source with a table without primary key, a non-InnoDB
    table, a foreign key into another database, triggers, routines, events, sequences or
    system-versioned tables, and a target that exists and holds tables or views.
    Tables: `CREATE TABLE target.t LIKE source.t`, then foreign keys (LIKE drops them) re-added
    pointing into the target, then rows with `INSERT INTO target.t (cols) SELECT cols FROM
    source.t WHERE <pk range>`, one autocommitted chunk of at most `chunk_rows` rows per statement
    (fewer for wide rows), ranges found by keyset pagination on the primary key. Generated columns
    are recomputed, not copied. Views are copied: `SHOW CREATE VIEW` with `source` rewritten to
    `target` and `SQL SECURITY INVOKER` instead of the source's definer, so a view never reads with
    more rights than the app user has. Chunks read at READ COMMITTED (no locks held on the source),
    so a source written to during the clone is copied chunk by chunk, not as one snapshot.
    On failure whatever this call created is dropped again.
    """
    validate_database_name(source)
    validate_database_name(target)
    if source == target:
        raise DatabaseError(f"cannot clone {quote_ident(source)} into itself")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, not {chunk_rows}")
    require_autocommit(conn, "clone_database")
    started = time.monotonic()
    with mysql_errors(f"clone {source} -> {target}"):
        if not database_exists(conn, source):
            raise DatabaseError(f"cannot clone: database {quote_ident(source)} does not exist")
        schema = read_schema(conn, source)
        problems = schema_problems(schema, allow_views=True)
        if problems:
            raise DatabaseError(f"cannot clone {quote_ident(source)}: {'; '.join(problems)}")
        created_db = _prepare_target(conn, source, target)
        made: list[str] = []
        try:
            rows = chunks = 0
            settings: dict[str, str | int] = {
                "foreign_key_checks": 0,
                "tx_isolation": "READ-COMMITTED",
                "sql_mode": "NO_AUTO_VALUE_ON_ZERO,STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION",
            }
            with session_settings(conn, settings):
                for table in schema.tables:
                    execute(
                        conn,
                        f"CREATE TABLE {quote_ident(target)}.{quote_ident(table.name)} "
                        f"LIKE {quote_ident(source)}.{quote_ident(table.name)}",
                    )
                    made.append(table.name)
                _add_foreign_keys(conn, target, schema.foreign_keys)
                for table in schema.tables:
                    n, c = _copy_rows(
                        conn, source, target, table, chunk_rows_for(table, chunk_rows)
                    )
                    rows, chunks = rows + n, chunks + c
                _copy_views(conn, source, target, schema.views, made)
        except BaseException:
            _undo_clone(conn, target, created_db, made)
            raise
    return CloneStats(len(schema.tables), rows, chunks, time.monotonic() - started)


def _prepare_target(conn: Any, source: str, target: str) -> bool:
    """Create the target like the source's defaults; True when this call created it."""
    if database_exists(conn, target):
        count = fetch_rows(
            conn,
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            (target,),
        )[0][0]
        if count:
            raise DatabaseError(
                f"cannot clone into {quote_ident(target)}: it exists and holds {count} tables "
                "or views; drop it first"
            )
        return False
    charset, collation = fetch_rows(
        conn,
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
        "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (source,),
    )[0]
    execute(
        conn,
        f"CREATE DATABASE {quote_ident(target)} CHARACTER SET %s COLLATE %s",
        (charset, collation),
    )
    return True


def _copy_rows(
    conn: Any, source: str, target: str, table: Table, chunk_rows: int
) -> tuple[int, int]:
    src = f"{quote_param_ident(source)}.{quote_param_ident(table.name)}"
    dst = f"{quote_param_ident(target)}.{quote_param_ident(table.name)}"
    cols = ", ".join(quote_param_ident(c) for c in table.columns)
    pk = ", ".join(quote_param_ident(c) for c in table.primary_key)
    pk_desc = ", ".join(f"{quote_param_ident(c)} DESC" for c in table.primary_key)

    def next_boundary(lower: Key | None) -> Key | None:
        where, args = key_range(table.primary_key, lower, None)
        found = fetch_rows(
            conn,
            f"SELECT {pk} FROM (SELECT {pk} FROM {src} WHERE {where} ORDER BY {pk} "
            f"LIMIT {int(chunk_rows)}) AS w ORDER BY {pk_desc} LIMIT 1",
            args,
        )
        return tuple(found[0]) if found else None

    rows = chunks = 0
    for lower, upper in iter_key_ranges(next_boundary):
        where, args = key_range(table.primary_key, lower, upper)
        rows += execute(
            conn, f"INSERT INTO {dst} ({cols}) SELECT {cols} FROM {src} WHERE {where}", args
        )
        chunks += 1
    return rows, chunks


FK_RULES = frozenset({"RESTRICT", "CASCADE", "SET NULL", "NO ACTION", "SET DEFAULT"})


def _add_foreign_keys(conn: Any, target: str, keys: Sequence[ForeignKey]) -> None:
    by_table: dict[str, list[str]] = {}
    for fk in keys:
        if fk.on_update not in FK_RULES or fk.on_delete not in FK_RULES:
            raise DatabaseError(f"foreign key {quote_ident(fk.name)}: unknown rule")
        by_table.setdefault(fk.table, []).append(
            f"ADD CONSTRAINT {quote_ident(fk.name)} FOREIGN KEY "
            f"({', '.join(map(quote_ident, fk.columns))}) REFERENCES "
            f"{quote_ident(target)}.{quote_ident(fk.referenced_table)} "
            f"({', '.join(map(quote_ident, fk.referenced_columns))}) "
            f"ON DELETE {fk.on_delete} ON UPDATE {fk.on_update}"
        )
    for table, clauses in by_table.items():
        execute(
            conn, f"ALTER TABLE {quote_ident(target)}.{quote_ident(table)} {', '.join(clauses)}"
        )


_VIEW_HEAD = re.compile(
    r"^CREATE (?:ALGORITHM=(?P<algorithm>\w+) )?(?:DEFINER=\S+ )?(?:SQL SECURITY \w+ )?VIEW "
    r"(?:`(?:[^`]|``)*`\.)?`(?:[^`]|``)*` AS ",
    re.DOTALL,
)


def rewrite_view(create: str, source: str, target: str, view: str) -> str:
    """`SHOW CREATE VIEW` of source.view as a CREATE VIEW of target.view reading target's tables."""
    head = _VIEW_HEAD.match(create)
    if head is None:
        raise DatabaseError(f"view {quote_ident(view)}: unexpected definition {create[:80]!r}")
    body = create[head.end() :].replace(f"{quote_ident(source)}.", f"{quote_ident(target)}.")
    algorithm = head.group("algorithm") or "UNDEFINED"
    return (
        f"CREATE ALGORITHM={algorithm} SQL SECURITY INVOKER VIEW "
        f"{quote_ident(target)}.{quote_ident(view)} AS {body}"
    )


def _copy_views(conn: Any, source: str, target: str, views: Sequence[str], made: list[str]) -> None:
    """Create the views in dependency order (a view over a view waits for the next pass);
    each one made is added to `made`."""
    pending = {
        v: rewrite_view(
            fetch_rows(conn, f"SHOW CREATE VIEW {quote_ident(source)}.{quote_ident(v)}")[0][1],
            source,
            target,
            v,
        )
        for v in views
    }
    for _ in range(len(views)):
        progress = False
        for view, sql in list(pending.items()):
            try:
                execute(conn, sql)
            except pymysql.MySQLError as exc:
                if exc.args[0] != ER_NO_SUCH_TABLE:
                    raise
                continue
            made.append(view)
            del pending[view]
            progress = True
        if not pending or not progress:
            break
    if pending:
        raise DatabaseError(
            f"views {', '.join(map(quote_ident, sorted(pending)))} read objects that are not "
            f"in {quote_ident(source)}"
        )


def _undo_clone(conn: Any, target: str, created_db: bool, made: Sequence[str]) -> None:
    with contextlib.suppress(pymysql.MySQLError):
        if created_db:
            execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(target)}")
            return
        with session_settings(conn, {"foreign_key_checks": 0}):
            for name in reversed(made):
                execute(conn, f"DROP VIEW IF EXISTS {quote_ident(target)}.{quote_ident(name)}")
                execute(conn, f"DROP TABLE IF EXISTS {quote_ident(target)}.{quote_ident(name)}")
