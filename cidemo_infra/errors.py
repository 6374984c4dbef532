"""One exception root; each domain error carries the process exit code the CLI maps it to."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

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
    """A terraform command failed. With `diagnostics` (its `-json` error events) the line names
    the resource address and the cloud's reason; otherwise the first `Error:` of its stderr."""

    def __init__(
        self,
        cmd: Sequence[str],
        rc: int,
        stderr: str,
        diagnostics: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.cmd = list(cmd)
        self.rc = rc
        self.stderr = stderr
        self.diagnostics = list(diagnostics)
        sub = next((c for c in self.cmd[1:] if not c.startswith("-")), "?")
        if self.diagnostics:
            more = len(self.diagnostics) - 1
            detail = diagnostic_line(self.diagnostics[0]) + (
                f" (+{more} more error{'s' if more > 1 else ''})" if more else ""
            )
        else:
            detail = _first_error_line(stderr) or f"exit code {rc}"
        super().__init__(f"terraform {sub} failed (exit {rc}): {detail}")


class TerraformTimeout(TerraformError):
    """A terraform command ran past `timeouts.terraform` and was interrupted."""

    def __init__(self, cmd: Sequence[str], timeout: float, hint: str) -> None:
        self.cmd = list(cmd)
        self.rc = -1
        self.stderr = ""
        self.diagnostics = []
        sub = next((c for c in self.cmd[1:] if not c.startswith("-")), "?")
        CidemoError.__init__(
            self,
            f"terraform {sub} did not finish within {timeout:g} s (timeouts.terraform) and was "
            f"stopped; {hint}",
        )


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


# gophercloud's "Expected HTTP response code [...] when accessing [POST url], but got 403 instead"
_HTTP = re.compile(
    r"Expected HTTP response code \[[^\]]*\] when accessing \[(?P<method>\w+) (?P<url>[^\]]+)\],"
    r" but got (?P<code>\d+) instead:?\s*(?P<body>.*)",
    re.DOTALL,
)


def diagnostic_line(diagnostic: Mapping[str, Any]) -> str:
    """One line from a terraform `-json` diagnostic: `<address>: <summary>: <cloud reason>`."""
    summary = " ".join(str(diagnostic.get("summary") or "").split())
    detail = " ".join(str(diagnostic.get("detail") or "").split())
    text = f"{summary}: {detail}" if detail and detail not in summary else summary
    text = _HTTP.sub(_http_reason, text)
    address = diagnostic.get("address")
    return f"{address}: {text}" if address else text


def _http_reason(match: re.Match[str]) -> str:
    body = match.group("body").strip()
    reason = _json_message(body) or body
    return f"the cloud answered HTTP {match.group('code')} to {match.group('method')}" + (
        f": {reason}" if reason else ""
    )


def _json_message(body: str) -> str | None:
    """The innermost "message" of an OpenStack error body ({"forbidden": {"message": ...}})."""
    start = body.find("{")
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(body[start:])
    except ValueError:
        return None
    while isinstance(data, dict):
        if isinstance(data.get("message"), str):
            return str(data["message"])
        inner = [v for v in data.values() if isinstance(v, dict)]
        if len(inner) != 1:
            return None
        data = inner[0]
    return None
