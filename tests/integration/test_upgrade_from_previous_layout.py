"""A site provisioned by the code before the package was restructured (commit PREVIOUS) converges
with the restructured code (commit MOVED): no changes planned, no container recreated, smoke
passes. The restructure moved modules only; state directory, labels and etcd keys are the same.

Then the checkout converges that site, still plain-HTTP etcd, to etcd over TLS with client
certificates (README "Upgrading a site made before etcd TLS"): the keys written before survive,
plain HTTP and a client without a certificate are refused, the bridge is gone, smoke passes.

Both are taken from git, not the checkout: later commits may change what runs (an image, a
member's settings), and the site would then be updated on purpose, which is not what this proves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest
import requests

from cidemo_infra.registry.keys import guard_key
from tests.conftest import REPO, need
from tests.integration.conftest import TestSite

pytestmark = pytest.mark.integration

PREVIOUS = "8db3d8b"  # main before the moves into platforms/, databases/, backups/, pipeline/
MOVED = "84d50b3"  # the moves


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


def _cidemo_at(tree: Path, site: TestSite, command: str) -> subprocess.CompletedProcess[str]:
    """`cidemo <command>` of the site, run by the code extracted in `tree`."""
    site_args = ["--site", str(site.path), "--state-dir", str(site.state)]
    return subprocess.run(
        [sys.executable, "-m", "cidemo_infra", command, *site_args],
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(tree)},
        timeout=900,
        check=False,
    )


def test_a_site_of_the_previous_layout_converges_with_nothing_recreated(
    engine: docker.DockerClient, site_factory, tmp_path: Path
) -> None:
    for commit in (PREVIOUS, MOVED):
        have = subprocess.run(
            ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], check=False
        )
        need(have.returncode == 0, f"commit {commit} in the checkout's history (a full clone)")
    before, after = tmp_path / "previous", tmp_path / "moved"
    _extract(PREVIOUS, before)
    _extract(MOVED, after)
    assert not (before / "cidemo_infra" / "pipeline").exists()
    assert (after / "cidemo_infra" / "pipeline").is_dir()
    site = site_factory()

    placed = _cidemo_at(before, site, "provision")
    assert placed.returncode == 0, placed.stderr
    containers = _site_containers(engine, site)
    assert len(containers) >= 5, containers

    again = _cidemo_at(after, site, "provision")
    assert again.returncode == 0, again.stderr
    assert "no changes" in again.stdout
    assert _site_containers(engine, site) == containers

    smoke = _cidemo_at(after, site, "smoke")
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr

    etcd = f"127.0.0.1:{site.data['services']['etcd']['port']}"
    marker = "/cidemo-upgrade-test/marker"
    written = requests.put(f"http://{etcd}/v2/keys{marker}", data={"value": "kept"}, timeout=10)
    assert written.status_code in (200, 201), written.text

    upgraded = site.cidemo("provision")
    assert upgraded.rc == 0, upgraded.err + upgraded.out
    assert "etcd-bridge serves plain HTTP on its old address" in upgraded.out + upgraded.err
    registry = site.registry()
    assert registry.get(marker) == "kept"
    assert registry.get(guard_key("", site.name)) is not None  # the cluster's guard, too
    with pytest.raises(requests.RequestException):
        requests.get(f"http://{etcd}/v2/keys/", timeout=5)
    tls = site.state / "tls"
    with pytest.raises(requests.exceptions.SSLError):  # no client certificate
        requests.get(f"https://{etcd}/v2/keys/", verify=str(tls / "ca.pem"), timeout=5)
    assert not any("etcd-bridge" in name for name in _site_containers(engine, site))
    assert site.cidemo("smoke").rc == 0
