"""Staging's and production's databases on the Galera cluster: names, schemas, app users.

Every function takes a connection as root through the proxy's read-write port (`connect`), so
all statements run on one member and reach the others as Galera write-sets. Names of databases and
users are validated (`^[a-z0-9_]{1,64}$`, users at most 32 characters) and every identifier is
quoted; values always travel as query parameters.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
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
# one restore batch or the swap may take minutes on a busy cluster
READ_TIMEOUT = 600
WRITE_TIMEOUT = 600


class DatabaseError(CidemoError):
    """A database operation was refused or failed; names the database, table or user."""


class DatabaseNameError(DatabaseError, ValueError):
    exit_code = EXIT_USAGE


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
