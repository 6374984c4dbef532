"""One exception root; each domain error carries the process exit code the CLI maps it to."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PLAN_CHANGES = 3


class CidemoError(Exception):
    """Base of every error the tool raises on purpose; `str()` is the one line the CLI prints."""

    exit_code = EXIT_FAILED


class UsageError(CidemoError):
    exit_code = EXIT_USAGE


class SiteError(CidemoError):
    """An invalid site file: names the file, the key path, the bad value and the valid choices."""

    exit_code = EXIT_USAGE

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid"
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{source}: {first}{more}")


class RenderError(CidemoError):
    pass


class TerraformError(CidemoError):
    def __init__(self, cmd: Sequence[str], rc: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.rc = rc
        self.stderr = stderr
        detail = _first_error_line(stderr) or f"exit code {rc}"
        sub = next((c for c in self.cmd[1:] if not c.startswith("-")), "?")
        super().__init__(f"terraform {sub} failed (exit {rc}): {detail}")


class CloudError(CidemoError):
    pass


class EngineError(CidemoError):
    """A Docker engine refused or could not be reached; names the node and the action."""


class PlacementError(CidemoError):
    pass


class RegistrationError(CidemoError):
    pass


class LockError(CidemoError):
    pass


def _first_error_line(stderr: str) -> str:
    lines = [ln.strip(" │╷╵\t") for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln]
    for i, line in enumerate(lines):
        if line.startswith("Error:"):
            rest = line[len("Error:") :].strip()
            follow = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{rest}: {follow}" if follow and not follow.startswith("on ") else rest
    return lines[0] if lines else ""
