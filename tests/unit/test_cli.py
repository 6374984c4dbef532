"""The command line: one line per error, tracebacks only with -v, plain output, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cidemo_infra.console import Reporter
from tests.conftest import REPO

pytestmark = pytest.mark.unit
BAD = REPO / "tests" / "data" / "sites" / "bad" / "even-members.yaml"


def test_an_error_is_one_line_and_the_traceback_needs_verbose(cidemo, tmp_path: Path) -> None:
    quiet = cidemo("render", "--site", str(BAD), "--state-dir", str(tmp_path / "a"))
    loud = cidemo("-v", "render", "--site", str(BAD), "--state-dir", str(tmp_path / "b"))
    assert quiet.rc == loud.rc == 2
    assert len(quiet.err.strip().splitlines()) == 1
    assert "Traceback" not in quiet.err
    assert "Traceback (most recent call last)" in loud.err
    assert quiet.err.strip().splitlines()[-1] == loud.err.strip().splitlines()[-1]


def test_unknown_option_is_a_usage_error(cidemo) -> None:
    result = cidemo("provision", "--no-such-flag")
    assert result.rc == 2
    assert "No such option" in result.err


def test_output_is_plain_without_a_terminal_or_with_no_color(cidemo, tmp_path: Path) -> None:
    result = cidemo(
        "render",
        "--site",
        str(REPO / "infra/sites/openstack.example.yaml"),
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert result.rc == 0
    assert "\x1b[" not in result.out + result.err


def test_reporter_turns_plain_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert Reporter().plain
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert not Reporter().plain


def test_every_documented_command_exists(cidemo) -> None:
    result = cidemo("--help")
    for command in (
        "schema",
        "render",
        "plan",
        "provision",
        "destroy",
        "status",
        "smoke",
        "recover",
        "images",
        "webhook",
    ):
        assert command in result.out
    for command in ("provision", "destroy"):
        helptext = cidemo(command, "--help").out
        assert "--dry-run" in helptext and "--yes" in helptext and "--site" in helptext
    assert "--json" in cidemo("plan", "--help").out


def test_every_jenkins_job_calls_the_cli_with_options_it_has(cidemo) -> None:
    """The jobs in infra/jenkins/ call `cidemo`; a renamed option must break this test first."""
    import re
    import shlex

    calls = re.findall(r"exec cidemo (.+)", (REPO / "infra/jenkins/jobs.yaml").read_text())
    assert len(calls) == 5
    for call in calls:
        line = re.sub(r"\$\{\{[^}]*\}\}|\$\{[^}]*\}|\$[A-Z_]+", "1", call)
        args = [a for a in shlex.split(line)]
        result = cidemo(*args, "--help")
        assert result.rc == 0, f"cidemo {call}: {result.err.strip()}"


@pytest.mark.parametrize("command", ["provision", "plan"])
def test_infrastructure_only_needs_an_openstack_site(cidemo, tmp_path: Path, command: str) -> None:
    site = REPO / "infra" / "sites" / "local.yaml"
    state = tmp_path / "state"
    result = cidemo(
        command, "--infrastructure-only", "--site", str(site), "--state-dir", str(state)
    )
    assert result.rc == 2
    assert result.err.strip().splitlines() == [
        "cidemo: error: --infrastructure-only: site 'local' has target local, which has no cloud "
        "infrastructure (only an openstack site has)"
    ]


def test_infrastructure_only_and_services_only_exclude_each_other(cidemo, tmp_path: Path) -> None:
    site = REPO / "infra" / "sites" / "openstack.example.yaml"
    result = cidemo(
        "plan",
        "--infrastructure-only",
        "--services-only",
        "--site",
        str(site),
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result.rc == 2
    assert "--services-only and --infrastructure-only exclude each other" in result.err
