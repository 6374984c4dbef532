"""The app image a site builds (`environments.build`): its ref, its reference, and `env up`
without `--ref`, which needs it; the refusals write nothing (no services here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cidemo_infra import app_image
from cidemo_infra.site import load_site
from tests.conftest import REPO, SITES

pytestmark = pytest.mark.unit

GUESTBOOK = REPO / "examples" / "guestbook"


def test_the_ref_is_a_hash_of_the_sources_and_follows_an_edit(tmp_path: Path) -> None:
    copy = tmp_path / "app"
    shutil.copytree(GUESTBOOK, copy)
    assert app_image.source_ref(copy) == app_image.source_ref(GUESTBOOK)
    assert len(app_image.source_ref(copy)) == 12
    (copy / "guestbook.py").write_text((copy / "guestbook.py").read_text() + "\n# edited\n")
    assert app_image.source_ref(copy) != app_image.source_ref(GUESTBOOK)


def test_the_default_site_builds_the_guestbook() -> None:
    site = load_site(SITES / "local.yaml")
    assert app_image.build_dir(site, SITES / "local.yaml") == GUESTBOOK
    ref = app_image.built_ref(site, SITES / "local.yaml")
    assert app_image.image_ref(site, ref) == f"cidemo/guestbook:{ref}"


def _site(tmp_path: Path, **environments: object) -> Path:
    data: dict[str, object] = {"name": "refs"}
    if environments:
        data["environments"] = environments
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("environments", "says"),
    [
        ({}, "no environments section"),
        ({"app": "guestbook"}, "--ref is required"),
    ],
)
def test_env_up_refuses_before_anything_is_written(
    cidemo, tmp_path: Path, environments: dict[str, str], says: str
) -> None:
    state = tmp_path / "state"
    result = cidemo(
        "env",
        "up",
        "--pr",
        "1",
        "--site",
        str(_site(tmp_path, **environments)),
        "--state-dir",
        str(state),
    )
    assert result.rc == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.err
    assert not state.exists()
