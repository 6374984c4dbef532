"""Project image tags: a hash of the image's own folder and common/, by paths relative to the images
folder, so a checkout and an installed package (which compiles jenkins-standin/standin.py into
__pycache__) give the same tags, and nothing is recreated when switching between them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cidemo_infra import images
from cidemo_infra.data import IMAGES
from cidemo_infra.errors import UsageError

pytestmark = pytest.mark.unit
BASE = "cidemo/debian:bookworm-slim"


@pytest.fixture
def copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The images folder copied elsewhere, as an install puts it."""
    where = tmp_path / "site-packages" / "cidemo_infra" / "data" / "images"
    shutil.copytree(IMAGES, where)
    monkeypatch.setattr(images, "IMAGES_DIR", where)
    return where


def test_tags_do_not_depend_on_where_the_images_folder_is(copied: Path) -> None:
    moved = {n: images.image_tag(n, BASE) for n in ("galera", "jenkins-standin", "router")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images, "IMAGES_DIR", IMAGES)
        here = {n: images.image_tag(n, BASE) for n in moved}
    assert moved == here


def test_compiled_python_is_not_part_of_a_tag_but_a_source_change_is(copied: Path) -> None:
    before = images.image_tag("jenkins-standin", BASE)
    cache = copied / "jenkins-standin" / "__pycache__"
    cache.mkdir()
    (cache / "standin.cpython-311.pyc").write_bytes(b"\x00compiled")
    assert images.image_tag("jenkins-standin", BASE) == before
    (copied / "jenkins-standin" / "standin.py").write_text("# changed\n")
    assert images.image_tag("jenkins-standin", BASE) != before


def test_a_missing_image_folder_is_named_not_hashed_as_nothing(copied: Path) -> None:
    shutil.rmtree(copied / "router")
    with pytest.raises(UsageError, match=r"project image 'router': no folder .*/images/router$"):
        images.image_tag("router", BASE)
