"""The smoke checks run at the same time: each check's verdicts land in the report in the
checks' order, every failure is reported, and a check that raises is a failed check of its own
while the others still report."""

from __future__ import annotations

import threading

import pytest

from cidemo_infra.checks.report import Report
from cidemo_infra.checks.smoke import run_parallel

pytestmark = pytest.mark.unit


def test_every_failure_is_reported_in_the_checks_order() -> None:
    started = threading.Barrier(3, timeout=10)  # passes only if the three run at the same time

    def failing(name: str):
        def check(report: Report) -> None:
            started.wait()
            report.add(name, False, f"{name} is down")

        return check

    def passing(report: Report) -> None:
        started.wait()
        report.add("fine", True, "answers")

    reports = run_parallel([failing("a"), passing, failing("b")], ["a", "fine", "b"])
    checks = [c for r in reports for c in r.checks]
    assert [(c.name, c.passed) for c in checks] == [("a", False), ("fine", True), ("b", False)]


def test_a_check_that_raises_is_a_failure_and_the_others_still_report() -> None:
    def broken(report: Report) -> None:
        raise ConnectionError("no route to the proxy")

    def fine(report: Report) -> None:
        report.add("jenkins http", True, "answers")

    reports = run_parallel([broken, fine], ["proxy", "jenkins"])
    merged = Report([c for r in reports for c in r.checks])
    assert not merged.passed
    assert [c.name for c in merged.failed()] == ["proxy"]
    assert "ConnectionError: no route to the proxy" in merged.failed()[0].detail
    assert merged.checks[1].name == "jenkins http" and merged.checks[1].passed
