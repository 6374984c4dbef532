"""The branch store: the previews' database files, on a filesystem with reflinks on every host.

A branch is a reflink copy of its snapshot's data directory: the copy shares every block with
the snapshot and takes a few milliseconds whatever the size; a block gets a copy of its own only
when the branch writes it. (A branch in the container's overlay2 layer instead copied each table
file whole the first time InnoDB opened it, which it does for reading too.)

Layout under `STORE` on each host, per site:

    <site>/snapshots/<tag>/data/    a snapshot's datadir, owned by root: a branch's server (uid
                                    mysql) can read its own copy only, and change nothing here
    <site>/snapshots/<tag>/.ready   written once the copy is complete
    <site>/branches/<env>/          a preview's datadir, the reflink copy, owned by mysql

A snapshot image carries its datadir in its layer (that is how it travels between engines); it is
copied into the store once per host: right after it is taken or shipped (`prepare`), else by the
first branch of it that starts there. Both run the image's start script, which refuses a store
without reflinks (exit 3, one line in the container's log) rather than copy the data whole.

Where `STORE` comes from: on the local target, `ensure_local` (run by `provision` and before a
branch is made) uses the directory if its filesystem has reflinks, else formats a sparse file
as XFS and mounts it there through a loop device. Cloud nodes do the same at boot with
`cidemo-branch-store.service` (render/cloudconfig.py), before Docker starts.

Everything else the tool does in the store runs in a short-lived container of a snapshot image
with `STORE` mounted (`run`), so it works the same on a remote engine.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import docker
import docker.errors

from cidemo_infra.engines import ENGINE_ERRORS
from cidemo_infra.errors import CidemoError
from cidemo_infra.placement.specs import LABEL_APPS_OF, LABEL_ROLE

STORE = "/var/lib/cidemo/branches"
STORE_FILE = "/var/lib/cidemo/branch-store.xfs"  # sparse: it uses what is written
STORE_SIZE = 64 * 1024**3
IN_HELPER = "/stores"  # where `run` mounts STORE
ROLE_HELPER = "branch-store"
EXIT_NO_REFLINKS = 3
HELPER_TIMEOUT = 300
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


class StoreError(CidemoError):
    """The branch store is missing, has no reflinks, or an operation in it failed."""


def snapshot_dir(site: str, tag: str, root: str = STORE) -> str:
    return f"{root}/{site}/snapshots/{tag}"


def branch_dir(site: str, env: str, root: str = STORE) -> str:
    return f"{root}/{site}/branches/{env}"


def has_reflinks(path: str | Path) -> bool:
    """Whether files under `path` can share blocks (FICLONE between two new files there)."""
    try:
        with (
            tempfile.TemporaryFile(dir=path) as src,
            tempfile.TemporaryFile(dir=path) as dst,
        ):
            src.write(b"cidemo" * 700)
            src.flush()
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
            return False
        raise StoreError(f"branch store {path}: {exc.strerror}") from None
    return True


def ensure_local(root: str = STORE, image_file: str = STORE_FILE, size: int = STORE_SIZE) -> str:
    """`root` on a filesystem with reflinks on this machine; returns what was done (or "")."""
    Path(root).mkdir(parents=True, exist_ok=True)
    lock_path = Path(image_file).with_name(".branch-store.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if has_reflinks(root):
            return ""
        if os.path.ismount(root):
            raise StoreError(
                f"branch store {root}: mounted, but its filesystem has no reflinks; unmount it "
                "or mount XFS (reflink=1) or btrfs there"
            )
        if os.geteuid() != 0:
            raise StoreError(
                f"branch store {root}: its filesystem has no reflinks, and making one (XFS on "
                f"a loop file) needs root; run as root or mount XFS or btrfs there"
            )
        mkfs = shutil.which("mkfs.xfs")
        if mkfs is None:
            raise StoreError(
                f"branch store {root}: needs mkfs.xfs to make its filesystem "
                "(Debian: apt-get install xfsprogs)"
            )
        made = ""
        if not Path(image_file).exists():
            with open(image_file, "wb") as sparse:
                sparse.truncate(size)
            _run([mkfs, "-q", "-m", "reflink=1", image_file], f"mkfs.xfs {image_file}")
            made = f"made {image_file} (XFS, sparse {size // 1024**3} GiB), "
        _run(["mount", "-o", "loop", image_file, root], f"mount {image_file} on {root}")
        if not has_reflinks(root):
            raise StoreError(f"branch store {root}: mounted {image_file}, still no reflinks")
        return f"{made}mounted on {root} through a loop device"


def _run(cmd: Sequence[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(f"branch store: {what}: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StoreError(f"branch store: {what}: {lines[-1] if lines else done.returncode}")


def used_bytes(root: str = STORE) -> int:
    """Bytes in use on the store's filesystem (the bench's disk rows: blocks, not file sizes,
    since reflinked files share theirs)."""
    st = os.statvfs(root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def run(
    client: docker.DockerClient,
    image: str,
    argv: Sequence[str],
    what: str,
    *,
    site: str,
    binds: Mapping[str, str] | None = None,
    root: str = STORE,
) -> str:
    """`argv` as root in a short-lived container of `image` with `binds` (host path -> path
    inside; default: the host's store at `IN_HELPER`); its output. `image` is a snapshot image:
    it is on every engine the store holds something of. Fails with the command's last line."""
    api = client.api
    mounts = binds if binds is not None else {root: IN_HELPER}
    try:
        created = api.create_container(
            image,
            entrypoint=list(argv),
            command=[],
            user="root",
            labels={LABEL_APPS_OF: site, LABEL_ROLE: ROLE_HELPER},  # destroy removes leftovers
            host_config=api.create_host_config(
                binds={host: {"bind": inside, "mode": "rw"} for host, inside in mounts.items()},
                tmpfs={"/var/lib/mysql": "size=64k"},  # the image's VOLUME: no anonymous volume
            ),
        )
    except ENGINE_ERRORS as exc:
        raise StoreError(f"branch store: {what}: cannot create its helper: {exc}") from None
    try:
        api.start(created["Id"])
        status = api.wait(created["Id"], timeout=HELPER_TIMEOUT).get("StatusCode", 1)
        out = api.logs(created["Id"]).decode(errors="replace").strip()
    except ENGINE_ERRORS as exc:
        raise StoreError(f"branch store: {what}: {exc}") from None
    finally:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(created["Id"], force=True, v=True)
    if status != 0:
        last = out.splitlines()[-1] if out else f"exit {status}"
        raise StoreError(f"branch store: {what}: {last}")
    return out


def _remove(
    client: docker.DockerClient, image: str, site: str, paths: Sequence[str], what: str
) -> None:
    run(client, image, ["rm", "-rf", "--", *paths], what, site=site)


def remove_branch(client: docker.DockerClient, image: str, site: str, env: str) -> None:
    _remove(client, image, site, [branch_dir(site, env, IN_HELPER)], f"remove {env}'s files")


def remove_snapshots(
    client: docker.DockerClient, image: str, site: str, tags: Sequence[str]
) -> None:
    if tags:
        dirs = [snapshot_dir(site, t, IN_HELPER) for t in tags]
        _remove(client, image, site, dirs, f"remove snapshots {', '.join(tags)}")


def remove_site(client: docker.DockerClient, image: str, site: str) -> None:
    _remove(client, image, site, [f"{IN_HELPER}/{site}"], f"remove {site}'s files")
