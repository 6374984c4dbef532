"""A site provisioned by the code before the package was restructured (commit PREVIOUS, taken from
git) converges with this code: no changes planned, no container recreated, smoke passes. The
restructure moved modules only; state directory, labels and etcd keys are the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from tests.conftest import REPO, need
from tests.integration.conftest import TestSite

pytestmark = pytest.mark.integration

PREVIOUS = "8db3d8b"  # main before the moves into platforms/, databases/, backups/, pipeline/


def _extract(commit: str, into: Path) -> None:
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "cidemo_infra", "infra"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def _site_containers(engine: docker.DockerClient, site: TestSite) -> dict[str, tuple[str, str]]:
    flt = {"label": f"io.cidemo.site={site.name}"}
    return {
        c.name: (c.id, c.attrs["State"]["StartedAt"])
        for c in engine.containers.list(all=True, filters=flt)
    }


def test_a_site_of_the_previous_layout_converges_with_nothing_recreated(
    engine: docker.DockerClient, site_factory, tmp_path: Path
) -> None:
    have = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], check=False
    )
    need(have.returncode == 0, f"commit {PREVIOUS} in the checkout's history (a full clone)")
    old = tmp_path / "previous"
    _extract(PREVIOUS, old)
    site = site_factory()

    site_args = ["--site", str(site.path), "--state-dir", str(site.state)]
    before = subprocess.run(
        [sys.executable, "-m", "cidemo_infra", "provision", *site_args],
        capture_output=True,
        text=True,
        cwd=old,
        env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(old)},
        timeout=900,
        check=False,
    )
    assert before.returncode == 0, before.stderr
    # the old code ran, not this checkout's: its package has no `pipeline`
    assert not (old / "cidemo_infra" / "pipeline").exists()
    placed = _site_containers(engine, site)
    assert len(placed) >= 5, placed

    again = site.cidemo("provision")
    assert again.rc == 0, again.err
    assert "no changes" in again.out
    assert _site_containers(engine, site) == placed

    smoke = site.cidemo("smoke")
    assert smoke.rc == 0, smoke.out + smoke.err
