"""Per-environment databases on the Galera cluster: names, server-side clones, app users.

Every function takes a connection as root through the proxy's read-write port (`connect`), so
all statements run on one member and reach the others as Galera write-sets. Names of databases and
users are validated (`^[a-z0-9_]{1,64}$`, users at most 32 characters) and every identifier is
quoted; values always travel as query parameters.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from cidemo_infra.errors import EXIT_USAGE, CidemoError
from cidemo_infra.galera.connection import guarded_connection

DATABASE_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
ENVIRONMENT_NAME = re.compile(r"^[a-z0-9-]+$")
MAX_USER_LENGTH = 32
SYSTEM_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
# the accounts the galera image creates; an environment must never take one over
SYSTEM_USERS = frozenset({"root", "mysql", "mariadb.sys", "sst", "cidemo_monitor", "haproxy_check"})

CONNECT_TIMEOUT = 10
# one clone chunk, one restore batch or the swap may take minutes on a busy cluster
READ_TIMEOUT = 600
WRITE_TIMEOUT = 600
# A write-set well under gcache.size (256M in the image) keeps certification and IST cheap.
MAX_CHUNK_BYTES = 8 << 20
ER_NO_SUCH_TABLE = 1146

Key = tuple[Any, ...]


class DatabaseError(CidemoError):
    """A database operation was refused or failed; names the database, table or user."""


class DatabaseNameError(DatabaseError, ValueError):
    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class CloneStats:
    tables: int
    rows: int
    chunks: int
    seconds: float


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]  # stored columns in order; generated ones are recomputed, not copied
    primary_key: tuple[str, ...]
    engine: str
    avg_row_length: int = 0


@dataclass(frozen=True)
class ForeignKey:
    table: str
    name: str
    columns: tuple[str, ...]
    referenced_schema: str
    referenced_table: str
    referenced_columns: tuple[str, ...]
    on_update: str
    on_delete: str


@dataclass(frozen=True)
class Schema:
    database: str
    tables: tuple[Table, ...]
    views: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...]
    others: tuple[
        str, ...
    ]  # triggers, routines, events, sequences, versioned tables: "trigger `x`"


def connect(
    host: str,
    port: int,
    user: str,
    password: str,
    database: str | None = None,
    *,
    tls_ca: Path | None = None,
) -> pymysql.connections.Connection:
    """A connection with autocommit on (every statement its own transaction), utf8mb4 and bounded
    timeouts; a failure to connect is a DatabaseError naming the endpoint, never the password.

    With `tls_ca` (the site CA), TLS is required and the server's certificate is verified
    against it and against `host`; a server that offers no TLS is refused. Whatever the
    transport, the password is never sent in clear (galera/connection.py)."""
    try:
        return guarded_connection(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            write_timeout=WRITE_TIMEOUT,
            tls_ca=tls_ca,
        )
    except pymysql.MySQLError as exc:
        raise DatabaseError(f"cannot connect as {user} to {host}:{port}: {reason(exc)}") from exc


def validate_database_name(name: str) -> str:
    if not isinstance(name, str) or not DATABASE_NAME.match(name):
        raise DatabaseNameError(
            f"database name {name!r} is not valid; use 1-64 characters of a-z, 0-9 and _"
        )
    if name in SYSTEM_DATABASES:
        raise DatabaseNameError(
            f"database name {name!r} is a system schema; choose a name other than "
            f"{', '.join(sorted(SYSTEM_DATABASES))}"
        )
    return name


def validate_user_name(name: str) -> str:
    if not isinstance(name, str) or not DATABASE_NAME.match(name) or len(name) > MAX_USER_LENGTH:
        raise DatabaseNameError(
            f"user name {name!r} is not valid; use 1-{MAX_USER_LENGTH} characters of a-z, 0-9 and _"
        )
    if name in SYSTEM_USERS:
        raise DatabaseNameError(f"user name {name!r} is an account of the cluster itself")
    return name


def preview_database(pr: int) -> str:
    """`pr_<n>` for pull request n (n >= 1)."""
    if isinstance(pr, bool) or not isinstance(pr, int) or pr < 1:
        raise DatabaseNameError(f"pull request number {pr!r} is not valid; use an integer >= 1")
    return f"pr_{pr}"


def environment_database(env: str) -> str:
    """The database of an environment (`pr-12-ghost` -> `pr_12_ghost`). Refuses names whose app
    user (named like the database) would be longer than 32 characters, so that fails here, early."""
    if not isinstance(env, str) or not ENVIRONMENT_NAME.match(env):
        raise DatabaseNameError(
            f"environment name {env!r} is not valid; use a-z, 0-9 and - (e.g. pr-12-ghost)"
        )
    name = env.replace("-", "_")
    if len(name) > MAX_USER_LENGTH:
        raise DatabaseNameError(
            f"environment name {env!r} is too long; its database and user take at most "
            f"{MAX_USER_LENGTH} characters"
        )
    return validate_database_name(name)


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def quote_param_ident(name: str) -> str:
    """An identifier inside a statement that also has %s parameters (pymysql formats with %)."""
    return quote_ident(name).replace("%", "%%")


def grant_database(name: str) -> str:
    """A database for GRANT with its wildcards `_` and `%` escaped: `pr_1` never matches `pr11`."""
    return quote_ident(name.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%"))


def require_autocommit(conn: Any, what: str) -> None:
    """Chunks and batches must commit one by one: one huge transaction is one huge write-set."""
    if not conn.get_autocommit():
        raise DatabaseError(f"{what} needs a connection with autocommit on (see connect())")


def database_exists(conn: Any, name: str) -> bool:
    validate_database_name(name)
    with mysql_errors(f"checking database {name}"):
        return bool(
            fetch_rows(
                conn, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)
            )
        )


@contextlib.contextmanager
def session_settings(conn: Any, settings: Mapping[str, str | int]) -> Iterator[None]:
    """Set session variables for a block and put the previous values back afterwards."""
    names = list(settings)
    with conn.cursor() as cur:
        cur.execute("SELECT " + ", ".join(f"@@session.{n}" for n in names))
        before = cur.fetchone()
        cur.execute("SET " + ", ".join(f"SESSION {n} = %s" for n in names), list(settings.values()))
    try:
        yield
    finally:
        with contextlib.suppress(pymysql.MySQLError), conn.cursor() as cur:
            cur.execute("SET " + ", ".join(f"SESSION {n} = %s" for n in names), list(before))


def read_schema(conn: Any, database: str) -> Schema:
    """Tables (stored columns, primary key, engine), views, foreign keys and the other objects."""
    args = (database,)
    kinds = fetch_rows(
        conn,
        "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, COALESCE(AVG_ROW_LENGTH, 0) "
        "FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
        args,
    )
    columns: dict[str, list[str]] = {}
    for table, column in fetch_rows(
        conn,
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND IS_GENERATED = 'NEVER' ORDER BY TABLE_NAME, ORDINAL_POSITION",
        args,
    ):
        columns.setdefault(table, []).append(column)
    keys: dict[str, list[str]] = {}
    for table, column in fetch_rows(
        conn,
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND INDEX_NAME = 'PRIMARY' ORDER BY TABLE_NAME, SEQ_IN_INDEX",
        args,
    ):
        keys.setdefault(table, []).append(column)
    tables, views, others = [], [], []
    for name, kind, engine, avg in kinds:
        if kind == "BASE TABLE":
            tables.append(
                Table(
                    name,
                    tuple(columns.get(name, ())),
                    tuple(keys.get(name, ())),
                    engine or "",
                    int(avg),
                )
            )
        elif kind == "VIEW":
            views.append(name)
        else:
            others.append(f"{kind.lower()} {quote_ident(name)}")
    others += [
        f"trigger {quote_ident(n)}"
        for (n,) in fetch_rows(
            conn,
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
            args,
        )
    ]
    others += [
        f"{kind.lower()} {quote_ident(n)}"
        for kind, n in fetch_rows(
            conn,
            "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES "
            "WHERE ROUTINE_SCHEMA = %s",
            args,
        )
    ]
    others += [
        f"event {quote_ident(n)}"
        for (n,) in fetch_rows(
            conn, "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", args
        )
    ]
    return Schema(
        database, tuple(tables), tuple(views), _foreign_keys(conn, database), tuple(others)
    )


def schema_problems(schema: Schema, allow_views: bool) -> list[str]:
    """Why a schema cannot be copied table by table on Galera; empty when it can."""
    problems = []
    for table in schema.tables:
        if not table.primary_key:
            problems.append(
                f"table {quote_ident(table.name)} has no primary key (Galera needs one on every "
                "table, and chunks follow it); add one"
            )
        if table.engine.lower() != "innodb":
            problems.append(
                f"table {quote_ident(table.name)} uses {table.engine or 'no engine'}; Galera "
                "replicates only InnoDB"
            )
    for fk in schema.foreign_keys:
        if fk.referenced_schema != schema.database:
            problems.append(
                f"foreign key {quote_ident(fk.name)} of {quote_ident(fk.table)} references "
                f"database {quote_ident(fk.referenced_schema)}; only references inside "
                f"{quote_ident(schema.database)} can be copied"
            )
    if not allow_views:
        problems += [
            f"view {quote_ident(v)} (only base tables are supported)" for v in schema.views
        ]
    problems += [f"{other} is not supported" for other in schema.others]
    return problems


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


def ensure_app_user(conn: Any, database: str, user: str, password: str) -> None:
    """`user`@'%' with `password` and ALL PRIVILEGES on `database`.* only; creates the account or
    sets its password. Refuses an existing account with any other privilege (it is not one of
    ours) and the cluster's own accounts."""
    validate_database_name(database)
    validate_user_name(user)
    if not password:
        raise DatabaseError(f"an empty password for user {user} is refused")
    account = f"'{user}'@'%'"
    with mysql_errors(f"app user {user}"):
        if _account_exists(conn, user):
            _refuse_foreign_account(conn, user, database)
            verb = "ALTER"
        else:
            verb = "CREATE"
        execute(conn, f"{verb} USER {account.replace('%', '%%')} IDENTIFIED BY %s", (password,))
        execute(conn, f"GRANT ALL PRIVILEGES ON {grant_database(database)}.* TO {account}")


def drop_database_and_user(conn: Any, database: str, user: str) -> None:
    """Drop the account (first, so the app loses access) and the database; each only if it exists.
    Sessions the user still has open stay connected until they end."""
    validate_database_name(database)
    validate_user_name(user)
    with mysql_errors(f"drop {database} and user {user}"):
        if _account_exists(conn, user):
            _refuse_foreign_account(conn, user, database)
            execute(conn, f"DROP USER IF EXISTS '{user}'@'%'")
        execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(database)}")


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


def _foreign_keys(conn: Any, database: str) -> tuple[ForeignKey, ...]:
    columns: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for table, name, column, ref_column in fetch_rows(
        conn,
        "SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_COLUMN_NAME "
        "FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s "
        "AND REFERENCED_TABLE_NAME IS NOT NULL ORDER BY TABLE_NAME, CONSTRAINT_NAME, "
        "ORDINAL_POSITION",
        (database,),
    ):
        columns.setdefault((table, name), []).append((column, ref_column))
    keys = []
    for table, name, ref_schema, ref_table, on_update, on_delete in fetch_rows(
        conn,
        "SELECT TABLE_NAME, CONSTRAINT_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME, "
        "UPDATE_RULE, DELETE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = %s ORDER BY TABLE_NAME, CONSTRAINT_NAME",
        (database,),
    ):
        pairs = columns.get((table, name), [])
        keys.append(
            ForeignKey(
                table,
                name,
                tuple(c for c, _ in pairs),
                ref_schema,
                ref_table,
                tuple(r for _, r in pairs),
                on_update,
                on_delete,
            )
        )
    return tuple(keys)


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


def _account_exists(conn: Any, user: str) -> bool:
    return bool(
        fetch_rows(conn, "SELECT 1 FROM mysql.user WHERE User = %s AND Host = '%%'", (user,))
    )


def _refuse_foreign_account(conn: Any, user: str, database: str) -> None:
    own = re.compile(
        r"^GRANT ALL PRIVILEGES ON " + re.escape(grant_database(database)) + r"\.\* TO "
    )
    for (line,) in fetch_rows(conn, f"SHOW GRANTS FOR '{user}'@'%'"):
        usage = line.startswith("GRANT USAGE ON *.* TO ")
        if (usage or own.match(line)) and "WITH GRANT OPTION" not in line:
            continue
        raise DatabaseError(
            f"user {user}@'%' holds privileges beyond {quote_ident(database)}.* "
            f"({line.split(' TO ')[0]}); it is not this database's app user, refusing to change "
            "or drop it"
        )


def fetch_rows(conn: Any, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """All rows of a query (use `quote_param_ident` for identifiers when `args` is given)."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def execute(conn: Any, sql: str, args: Sequence[Any] | None = None) -> int:
    with conn.cursor() as cur:
        return int(cur.execute(sql, args))


def reason(exc: BaseException) -> str:
    """A MySQL error as one line: its message and code."""
    args: tuple[Any, ...] = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{args[1]} (error {args[0]})"
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def mysql_errors(what: str, error: type[CidemoError] = DatabaseError) -> Iterator[None]:
    """Turn a MySQL error into `error`, one line that says what was being done."""
    try:
        yield
    except pymysql.MySQLError as exc:
        raise error(f"{what}: {reason(exc)}") from exc
