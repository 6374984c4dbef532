"""Which `CREATE TABLE` statements a backup may carry and a restore runs (as root): one plain
InnoDB table definition, as MariaDB's `SHOW CREATE TABLE` prints it, and nothing else.

Refused: anything but exactly one `CREATE TABLE <name> (...)` (no `;`, comments or double-quoted
text), table options outside a short list (`DATA DIRECTORY`, `INDEX DIRECTORY`, `CONNECTION`,
`UNION`, `TABLESPACE`, partitioning, system versioning, ...), an engine other than InnoDB, and,
inside the parentheses, those same words, option assignments (`x=...`) other than
`KEY_BLOCK_SIZE`, and foreign keys that reference a table of another database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<ident>`(?:[^`]|``)*`)
    | (?P<string>'(?:[^'\\]|\\.|'')*')
    | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<punct>[(),=.+\-*/%<>!&|^~:])
    """,
    re.VERBOSE | re.DOTALL,
)
# table options SHOW CREATE TABLE prints for a plain InnoDB table; each is `NAME=value`
TABLE_OPTIONS = frozenset(
    {
        "ENGINE",
        "AUTO_INCREMENT",
        "DEFAULT CHARSET",
        "CHARSET",
        "DEFAULT CHARACTER SET",
        "CHARACTER SET",
        "COLLATE",
        "DEFAULT COLLATE",
        "ROW_FORMAT",
        "COMMENT",
        "KEY_BLOCK_SIZE",
        "STATS_PERSISTENT",
        "STATS_AUTO_RECALC",
        "STATS_SAMPLE_PAGES",
        "PAGE_COMPRESSED",
        "PAGE_COMPRESSION_LEVEL",
        "CHECKSUM",
        "PACK_KEYS",
    }
)
# words that never belong to a column or index definition: they place files, reach other servers
# or tables, or partition
FORBIDDEN_WORDS = frozenset(
    {
        "DIRECTORY",
        "CONNECTION",
        "ENGINE",
        "PARTITION",
        "PARTITIONS",
        "SUBPARTITION",
        "TABLESPACE",
        "UNION",
        "INSERT_METHOD",
        "SELECT",
        "LOAD_FILE",
        "ENCRYPTED",
        "ENCRYPTION_KEY_ID",
    }
)


class DdlError(ValueError):
    """A CREATE TABLE a restore would not run; the message says what is in it (one line)."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str

    @property
    def upper(self) -> str:
        return self.text.upper()


def check_create_table(create: str, table: str) -> None:
    """Raise DdlError unless `create` is one plain InnoDB `CREATE TABLE` of `table`."""
    tokens = _tokens(create)
    words = [t.upper for t in tokens[:2]]
    if words != ["CREATE", "TABLE"] or len(tokens) < 4:
        raise DdlError("not a CREATE TABLE statement")
    if tokens[2].kind != "ident" or _unquote(tokens[2].text) != table:
        raise DdlError(f"it creates {tokens[2].text[:80]}, not table {table!r}")
    if tokens[3].text != "(":
        raise DdlError("no column list after the table name")
    end = _closing(tokens, 3)
    _check_definitions(tokens[4:end])
    _check_table_options(tokens[end + 1 :])


def _tokens(create: str) -> list[_Token]:
    found: list[_Token] = []
    pos = 0
    while pos < len(create):
        match = TOKEN.match(create, pos)
        if match is None:
            raise DdlError(f"{create[pos : pos + 1]!r} is not part of a plain table definition")
        kind = match.lastgroup or ""
        text = match.group()
        if kind == "punct" and create[pos : pos + 2] in ("--", "/*"):
            raise DdlError("comments are not part of a plain table definition")
        if kind != "space":
            found.append(_Token(kind, text))
        pos = match.end()
    return found


def _unquote(ident: str) -> str:
    return ident[1:-1].replace("``", "`")


def _closing(tokens: list[_Token], start: int) -> int:
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i].kind != "punct":
            continue
        if tokens[i].text == "(":
            depth += 1
        elif tokens[i].text == ")":
            depth -= 1
            if depth == 0:
                return i
    raise DdlError("unbalanced parentheses")


def _check_definitions(body: list[_Token]) -> None:
    depth = 0
    for i, token in enumerate(body):
        if token.kind == "word" and token.upper in FORBIDDEN_WORDS:
            raise DdlError(f"{token.upper} in a column or index definition")
        if token.kind != "punct":
            continue
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif token.text == "=" and depth == 0:
            before = body[i - 1].upper if i else ""
            if before != "KEY_BLOCK_SIZE":
                raise DdlError(f"option {before or '='}= in a column or index definition")
    for i, token in enumerate(body):
        if token.kind == "word" and token.upper == "REFERENCES":
            rest = body[i + 1 : i + 3]
            if len(rest) < 2 or rest[0].kind != "ident" or rest[1].text != "(":
                raise DdlError("a foreign key that references a table of another database")


def _check_table_options(options: list[_Token]) -> None:
    engine = None
    i = 0
    while i < len(options):
        name: list[str] = []
        while i < len(options) and options[i].kind == "word":
            name.append(options[i].upper)
            i += 1
        option = " ".join(name)
        if not name or i >= len(options) or options[i].text != "=":
            shown = option or options[i].text[:40]
            raise DdlError(f"table option {shown} is not allowed")
        if option not in TABLE_OPTIONS:
            raise DdlError(f"table option {option} is not allowed")
        if i + 1 >= len(options) or options[i + 1].kind not in ("word", "number", "string"):
            raise DdlError(f"table option {option} has no value")
        value = options[i + 1]
        if option == "ENGINE":
            if value.upper != "INNODB":
                raise DdlError(f"engine {value.text[:40]}: only InnoDB tables are restored")
            engine = value.text
        i += 2
    if engine is None:
        raise DdlError("no ENGINE=InnoDB")
