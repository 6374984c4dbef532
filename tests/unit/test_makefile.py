"""The Makefile's `env-*` wrappers call the `cidemo env` commands the CLI has, and refuse a
missing environment or commit with make's one-line error (exit 2) before running anything."""

from __future__ import annotations

import subprocess

import pytest

from cidemo_infra.pipeline.commands import env
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def make_n(*args: str) -> subprocess.CompletedProcess[str]:
    """`make -n`: what make would run, nothing run."""
    return subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def cidemo_line(result: subprocess.CompletedProcess[str]) -> list[str]:
    text = result.stdout.replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith(".venv/bin/cidemo env ")]
    return line.split()[1:]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["env-up", "PR=12", "REF=abc123", "IMAGE=cidemo/guestbook:abc123"],
            ["env", "up", "--pr", "12", "--ref", "abc123", "--image", "cidemo/guestbook:abc123"],
        ),
        (["env-up", "ENV=staging", "REF=abc"], ["env", "up", "--staging", "--ref", "abc"]),
        (
            ["env-up", "PR=3", "REF=abc", "FORK=1"],
            ["env", "up", "--pr", "3", "--ref", "abc", "--fork"],
        ),
        (["env-down", "PR=12"], ["env", "down", "--pr", "12"]),
        (["env-down", "ENV=production"], ["env", "down", "--production"]),
        (["env-list"], ["env", "list"]),
        (["env-promote"], ["env", "promote"]),
        (["env-gc"], ["env", "gc"]),
        (["env-refresh-staging"], ["env", "refresh-staging"]),
        (
            ["env-refresh-staging", "FROM=guestbook-20261101T000000Z"],
            ["env", "refresh-staging", "--from", "guestbook-20261101T000000Z"],
        ),
        (["env-backups"], ["env", "backups"]),
    ],
)
def test_a_wrapper_runs_the_cidemo_env_command(args: list[str], expected: list[str]) -> None:
    result = make_n(*args, "SITE=my.yaml")
    assert result.returncode == 0, result.stderr
    words = cidemo_line(result)
    site = words.index("--site")
    assert words[site + 1] == "my.yaml"
    assert words[:site] + words[site + 2 :] == expected
    # the CLI has the command and every option the wrapper passes
    command = env.commands[expected[1]]
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert {w for w in expected[2:] if w.startswith("--")} <= known


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["env-up", "REF=abc"], "name the environment: PR=<n>, ENV=staging or ENV=production"),
        (["env-up", "ENV=stage", "REF=abc"], "name the environment"),
        (["env-up", "PR=12"], "REF is required: make env-up PR=<n> REF=<sha>"),
        (["env-down"], "name the environment"),
    ],
)
def test_a_missing_environment_or_commit_stops_make(args: list[str], message: str) -> None:
    result = make_n(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert ".venv/bin/cidemo" not in result.stdout


def test_demo_runs_the_demo_script_with_the_site() -> None:
    result = make_n("demo", "SITE=my.yaml")
    assert result.returncode == 0, result.stderr
    assert "bash scripts/demo.sh .venv/bin/cidemo my.yaml" in result.stdout
