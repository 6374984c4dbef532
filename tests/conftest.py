"""Shared fixtures: the repo root, the CLI runner, and a rule for services that are missing."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SITES = REPO / "infra" / "sites"
IN_CI = bool(os.environ.get("CI"))


def need(condition: bool, what: str) -> None:
    """A test that needs a missing service fails in CI with a clear message; skips elsewhere."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required service missing in CI: {what}")
    pytest.skip(f"not available here: {what}")


@dataclass
class Run:
    rc: int
    out: str
    err: str


def run_cidemo(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 900,
    stdin: str | None = None,
) -> Run:
    """Run the real `cidemo` entry point in a subprocess, as an operator would."""
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "cidemo_infra", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        input=stdin,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cidemo():
    return run_cidemo


def skip_unless_env(items: list[pytest.Item], marker: str, env: str, target: str) -> None:
    """Skip the tests marked `marker` unless `env`=1 (what `target` sets)."""
    if os.environ.get(env) == "1":
        return
    skip = pytest.mark.skip(reason=f"{target} only ({env}=1)")
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `full_only` (minutes each, their path covered by another test of the same
    run) run in `make test-full` only; `make test` and CI keep within their time budget."""
    skip_unless_env(items, "full_only", "CIDEMO_TEST_FULL", "full run: make test-full")
