"""The branch store on a host: `ensure_local` (the local target) and the script cloud nodes run at
boot (`cidemo-branch-store.service`, taken from the rendered user-data), each on this machine's
real ext4, loop devices and XFS, under temporary paths."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cidemo_infra.placement import branch_store
from cidemo_infra.render.cloudconfig import BRANCH_STORE_SCRIPT
from tests.conftest import REPO, run_cidemo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a loop device needs root"),
]

SIZE = 512 * 1024**2  # the smallest XFS mkfs.xfs makes with reflinks is 300 MiB


@pytest.fixture
def unmount() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False, capture_output=True)


def test_ensure_local_makes_an_xfs_with_reflinks_once(tmp_path: Path, unmount: list[Path]) -> None:
    root, image = tmp_path / "branches", tmp_path / "store.xfs"
    root.mkdir()
    assert not branch_store.has_reflinks(root)  # this machine's ext4
    unmount.append(root)
    said = branch_store.ensure_local(str(root), str(image), SIZE)
    assert said.startswith(f"made {image}") and os.path.ismount(root)
    assert branch_store.has_reflinks(root)
    assert image.stat().st_blocks * 512 < SIZE // 4  # sparse: it holds what is written
    assert branch_store.ensure_local(str(root), str(image), SIZE) == ""  # converged: nothing to do
    subprocess.run(["umount", str(root)], check=True)
    # after a reboot: the file is there, only the mount is missing
    assert (
        branch_store.ensure_local(str(root), str(image), SIZE)
        == f"mounted on {root} through a loop device"
    )


def test_a_mounted_store_without_reflinks_is_refused(tmp_path: Path, unmount: list[Path]) -> None:
    root = tmp_path / "branches"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], check=True)
    unmount.append(root)
    with pytest.raises(branch_store.StoreError, match=f"branch store {root}: mounted, but"):
        branch_store.ensure_local(str(root), str(tmp_path / "store.xfs"), SIZE)
    assert not (tmp_path / "store.xfs").exists()


def _boot_script(tmp_path: Path) -> str:
    """The branch store's script from a node's rendered user-data."""
    state = tmp_path / "state"
    example = REPO / "infra" / "sites" / "openstack.example.yaml"
    result = run_cidemo("render", "--site", str(example), "--state-dir", str(state))
    assert result.rc == 0, result.err
    document = yaml.safe_load((state / "user-data" / "deis-1.yaml").read_text())
    files = {f["path"]: f for f in document["write_files"]}
    assert files[BRANCH_STORE_SCRIPT]["permissions"] == "0755"
    units = {u["name"]: u for u in document["coreos"]["units"]}
    unit = units["cidemo-branch-store.service"]
    assert f"ExecStart={BRANCH_STORE_SCRIPT}" in unit["content"]
    assert "Before=docker.service" in unit["content"] and unit["enable"] is True
    return str(files[BRANCH_STORE_SCRIPT]["content"])


def test_the_nodes_boot_script_makes_the_store_and_keeps_it(
    tmp_path: Path, unmount: list[Path]
) -> None:
    script = _boot_script(tmp_path)
    assert (
        f"root={branch_store.STORE}\n" in script and f"file={branch_store.STORE_FILE}\n" in script
    )
    # the same script on temporary paths, with a smaller file (the test's only changes)
    root, image = tmp_path / "branches", tmp_path / "store.xfs"
    script = script.replace(f"root={branch_store.STORE}\n", f"root={root}\n")
    script = script.replace(f"file={branch_store.STORE_FILE}\n", f"file={image}\n")
    script = re.sub(r"truncate -s \d+", f"truncate -s {SIZE}", script)
    path = tmp_path / "cidemo-branch-store"
    path.write_text(script)
    unmount.append(root)
    for _ in range(2):  # the second boot finds it mounted with reflinks: nothing to do
        done = subprocess.run(["sh", str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert os.path.ismount(root) and branch_store.has_reflinks(root)
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert len([m for m in mounts if m.split()[1] == str(root)]) == 1
    assert not list(root.glob(".reflink-probe*"))
