"""Progress and tables: rich on a terminal, plain when NO_COLOR is set or stdout is no tty."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table


def _is_plain() -> bool:
    return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()


class Reporter:
    """What the CLI tells the operator; never given a secret."""

    def __init__(self, quiet: bool = False) -> None:
        self.plain = _is_plain()
        self.quiet = quiet
        self.out = Console(
            no_color=self.plain,
            highlight=False,
            soft_wrap=True,
            force_terminal=False if self.plain else None,
        )
        self.err = Console(
            stderr=True,
            no_color=self.plain,
            highlight=False,
            soft_wrap=True,
            force_terminal=False if self.plain else None,
        )

    def step(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"==> {message}", markup=False)

    def detail(self, message: str) -> None:
        """One line of a running step's own progress (terraform's events), on stderr."""
        if not self.quiet:
            self.err.print(f"    {message}", markup=False)

    @contextmanager
    def progress(self, message: str) -> Iterator[None]:
        """A spinner on a terminal; one line otherwise."""
        if self.quiet:
            yield
        elif self.plain:
            self.err.print(f"==> {message}", markup=False)
            yield
        else:
            with self.err.status(message):
                yield
            self.err.print(f"[green]✓[/green] {message}")

    def line(self, text: str = "") -> None:
        self.out.print(text, markup=False)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.plain:
            widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
            for row in (headers, *rows):
                self.out.print(
                    "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip(),
                    markup=False,
                )
            return
        table = Table(*headers)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        self.out.print(table)
