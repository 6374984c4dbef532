"""The chaos suite's site, the full-set switch and the table at the end of the run.

`make test` runs the scenarios marked `chaos` only; those also marked `chaos_full` run with
CIDEMO_CHAOS_FULL=1 (`make chaos`, which prints the table of every scenario).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml

from tests.conftest import skip_unless_env
from tests.integration.chaos import harness
from tests.integration.conftest import TestSite, make_site, remove_site

RECOVERY_WAIT = 30  # the site setting services.galera.recovery_wait of the chaos site


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_unless_env(items, "chaos_full", "CIDEMO_CHAOS_FULL", "full chaos set: make chaos")


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not harness.ROWS:
        return
    text = harness.table(harness.ROWS)
    terminalreporter.write_sep("=", "chaos")
    terminalreporter.write_line(text)
    out = os.environ.get("CIDEMO_CHAOS_TABLE")
    if out:
        Path(out).write_text(text + "\n")


@pytest.fixture(scope="module")
def chaos_site(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestSite]:
    for _ in range(3):
        site = make_site(engine, tmp_path_factory.mktemp("chaos"))
        site.data["services"]["galera"]["recovery_wait"] = RECOVERY_WAIT
        site.data["services"]["jenkins"]["enabled"] = False
        site.path.write_text(yaml.safe_dump(site.data))
        result = harness.provision(site)
        if "Pool overlaps" not in result.err:  # another suite took the free subnet meanwhile
            break
        remove_site([engine], site.name)
    try:
        assert result.rc == 0, result.err + result.out
        harness.prepare_schema(site)
        yield site
    finally:
        flt = {"label": f"io.cidemo.site={site.name}"}
        for container in engine.containers.list(all=True, filters=flt):  # kept for a post-mortem
            (site.path.parent / f"{container.name}.log").write_bytes(container.logs())
        remove_site([engine], site.name)
        with contextlib.suppress(docker.errors.ImageNotFound):  # the tag scenario 6 made
            engine.images.remove(f"cidemo-chaos/galera:{site.name}-v2")
