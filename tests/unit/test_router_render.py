"""The app router's config from its routes: an environment held in maintenance answers 503 with
a Retry-After (refresh-staging holds staging so while it restores)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

RENDER = REPO / "cidemo_infra" / "data" / "images" / "router" / "render-router-cfg"


def render(lines: str) -> str:
    result = subprocess.run(
        ["bash", str(RENDER)],
        input=lines,
        capture_output=True,
        text=True,
        env={**os.environ, "APPS_DOMAIN": "cidemo.test"},
        check=True,
        timeout=30,
    )
    return result.stdout


def test_an_env_in_maintenance_answers_503_with_retry_after_before_its_backend() -> None:
    cfg = render("stage-ghost stage-ghost:2368\n@maintenance stage-ghost 30\n")
    lines = [ln.strip() for ln in cfg.splitlines()]
    held = next(i for i, ln in enumerate(lines) if ln.startswith("http-request return status 503"))
    route = next(i for i, ln in enumerate(lines) if ln.startswith("use_backend env_stage-ghost"))
    assert held < route  # haproxy runs http-request rules before choosing a backend
    assert "hdr Retry-After 30" in lines[held]
    assert "stage-ghost.cidemo.test" in lines[held]


def test_without_maintenance_nothing_answers_503_and_bad_lines_are_ignored() -> None:
    assert "503" not in render("stage-ghost stage-ghost:2368\n")
    assert "503" not in render("stage-ghost stage-ghost:2368\n@maintenance Stage;x 30\n")
