"""Where backups live: a directory, or a container of OpenStack object storage (Swift).

A backup is made in a local directory first (`backup.backup_database`, into the store's
`scratch()`); `keep` verifies it completely (with the site's backup key) and keeps it, and
`fetch` gives it back for a restore. Names are `<database>-<UTC timestamp>` (`backup.BACKUP_NAME`).

- `DirectoryStore(path)`: the backup directories themselves, under `path`.
- `SwiftStore(conn, container, site, scratch)`: objects `<site>/<name>/<file>` in `container`
  (created when missing); the local copy in `scratch` is removed once kept, or when keeping
  fails. The table files go up first and `manifest.json` last, so a backup whose upload broke
  off has no manifest and is not listed; each upload is checked against the server's size and MD5
  (ETag). Fetching downloads a backup into a scratch directory, where `backup.verify_backup`
  checks it completely before anything is restored from it.

`prune(database, keep)` removes all but the newest `keep` complete backups of a database (and, in
a container, the leftovers of broken-off uploads older than the newest complete backup).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cidemo_infra.backups import backup
from cidemo_infra.backups.backup import BackupError
from cidemo_infra.errors import UsageError

if TYPE_CHECKING:
    from openstack.connection import Connection

CHUNK = 1 << 20
# objects of a backup: "<site>/<name>/<file>"; a site prefix keeps sites sharing a container apart
SEPARATOR = "/"


@dataclass(frozen=True)
class StoredBackup:
    name: str
    where: str  # a path, or swift://<container>/<site>/<name>


class BackupStore(Protocol):
    def describe(self) -> str: ...

    def scratch(self) -> Path: ...

    def where(self, name: str) -> str: ...

    def keep(self, local: Path, key: bytes) -> StoredBackup: ...

    def backups(self, database: str | None = None) -> list[StoredBackup]: ...

    def fetch(self, name: str) -> contextlib.AbstractContextManager[Path]: ...

    def prune(self, database: str, keep: int) -> list[str]: ...


def check_name(name: str) -> str:
    if not backup.BACKUP_NAME.match(name):
        raise UsageError(
            f"backup name {name!r} is not one this tool makes (<database>-<YYYYmmddTHHMMSSZ>)"
        )
    return name


def _newest_first(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (n.rsplit("-", 1)[1], n), reverse=True)


class DirectoryStore:
    """Backups kept where they were made: `<path>/<name>/`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def scratch(self) -> Path:
        return self.path

    def where(self, name: str) -> str:
        return str(self.path / name)

    def keep(self, local: Path, key: bytes) -> StoredBackup:
        """A backup made in this directory, verified; it stays where it is."""
        if local.parent != self.path:
            raise BackupError(f"{local}: not in the backup directory {self.path}")
        backup.verify_backup(local, key)
        return StoredBackup(local.name, self.where(local.name))

    def backups(self, database: str | None = None) -> list[StoredBackup]:
        if not self.path.is_dir():
            return []
        found = [
            p.name
            for p in self.path.iterdir()
            if p.is_dir() and backup.BACKUP_NAME.match(p.name) and (p / backup.MANIFEST).is_file()
        ]
        if database is not None:
            found = [n for n in found if n.rsplit("-", 1)[0] == database]
        return [StoredBackup(n, self.where(n)) for n in _newest_first(found)]

    @contextlib.contextmanager
    def fetch(self, name: str) -> Iterator[Path]:
        path = self.path / check_name(name)
        if not (path / backup.MANIFEST).is_file():
            raise BackupError(f"{path}: no such complete backup")
        yield path

    def prune(self, database: str, keep: int) -> list[str]:
        doomed = [b.name for b in self.backups(database)][keep:]
        for name in doomed:
            # the manifest first: a prune that breaks off leaves no half backup that looks whole
            (self.path / name / backup.MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(self.path / name)
        return doomed


class SwiftStore:
    """Backups as objects `<site>/<name>/<file>` in an OpenStack object-storage container."""

    def __init__(self, conn: Connection, container: str, site: str, scratch: Path) -> None:
        self.conn = conn
        self.container = container
        self.site = site
        self._scratch = scratch

    def describe(self) -> str:
        return f"swift://{self.container}/{self.site}/"

    def scratch(self) -> Path:
        return self._scratch

    def where(self, name: str) -> str:
        return self._url(self._key(name))

    def keep(self, local: Path, key: bytes) -> StoredBackup:
        """Verify a local backup and upload it: table files, then the manifest, each checked. The
        local copy is scratch: it is removed afterwards, also when verifying or uploading fails."""
        try:
            backup.verify_backup(local, key)
            return self._upload(local)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def _upload(self, local: Path) -> StoredBackup:
        name = check_name(local.name)
        files = sorted(p for p in local.iterdir() if p.name != backup.MANIFEST)
        files.append(local / backup.MANIFEST)
        uploaded: list[str] = []
        with self._errors(f"creating container {self.container}"):
            if self._container_missing():
                self.conn.object_store.create_container(name=self.container)
        try:
            for file in files:
                key = self._key(name, file.name)
                with self._errors(f"uploading {key}"):
                    self.conn.object_store.create_object(
                        self.container, key, filename=str(file), generate_checksums=True
                    )
                uploaded.append(key)
                self._check_upload(key, file)
        except BaseException:
            for key in reversed(uploaded):  # the manifest (if it went up) goes first
                with contextlib.suppress(Exception):
                    self.conn.object_store.delete_object(key, container=self.container)
            raise
        return StoredBackup(name, self.where(name))

    def backups(self, database: str | None = None) -> list[StoredBackup]:
        names = [n for n, files in self._inventory().items() if backup.MANIFEST in files]
        if database is not None:
            names = [n for n in names if n.rsplit("-", 1)[0] == database]
        return [StoredBackup(n, self.where(n)) for n in _newest_first(names)]

    @contextlib.contextmanager
    def fetch(self, name: str) -> Iterator[Path]:
        """Download a complete backup into a scratch directory (removed afterwards)."""
        check_name(name)
        objects = self._objects(self._key(name) + SEPARATOR)
        if backup.MANIFEST not in objects:
            raise BackupError(f"{self.where(name)}: no such complete backup")
        odd = [f for f in objects if SEPARATOR in f or f.startswith(".")]
        if odd:
            raise BackupError(f"{self._url(self._key(name, odd[0]))}: not a file of a backup")
        self._scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = Path(tempfile.mkdtemp(prefix=f".fetch-{name}.", dir=self._scratch))
        try:
            local = work / name
            local.mkdir(mode=0o700)
            for file in objects:
                key = self._key(name, file)
                with self._errors(f"downloading {key}"), (local / file).open("xb") as out:
                    local.joinpath(file).chmod(0o600)
                    for chunk in self.conn.object_store.stream_object(
                        key, container=self.container, chunk_size=CHUNK
                    ):
                        out.write(chunk)
            try:
                yield local
            except BackupError as exc:  # name the stored objects, not the scratch copy
                raise BackupError(str(exc).replace(str(local), self.where(name))) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def prune(self, database: str, keep: int) -> list[str]:
        inventory = {n: f for n, f in self._inventory().items() if n.rsplit("-", 1)[0] == database}
        complete = _newest_first([n for n, files in inventory.items() if backup.MANIFEST in files])
        doomed = complete[keep:]
        if complete:
            # broken-off uploads older than the newest complete backup: no upload is running
            # (refresh-staging holds staging's lock), so they will never be finished
            newest = complete[0].rsplit("-", 1)[1]
            doomed += sorted(
                n for n in inventory if n not in complete and n.rsplit("-", 1)[1] < newest
            )
        for name in doomed:
            # the manifest first: a prune that breaks off leaves no half backup that looks whole
            files = sorted(inventory[name], key=lambda f: f != backup.MANIFEST)
            for file in files:
                with self._errors(f"deleting {self._key(name, file)}"):
                    self.conn.object_store.delete_object(
                        self._key(name, file), container=self.container, ignore_missing=True
                    )
        return doomed

    def _url(self, key: str) -> str:
        return f"swift://{self.container}/{key}"

    def _key(self, name: str, file: str | None = None) -> str:
        return SEPARATOR.join([self.site, name] + ([file] if file else []))

    def _container_missing(self) -> bool:
        from openstack import exceptions as sdk

        try:
            self.conn.object_store.get_container_metadata(self.container)
        except sdk.NotFoundException:
            return True
        return False

    def _objects(self, prefix: str) -> list[str]:
        """Names (after `prefix`) of the objects under `prefix`; none when the container is
        missing."""
        from openstack import exceptions as sdk

        with self._errors(f"listing {self.container}/{prefix}"):
            try:
                return [
                    o.name[len(prefix) :]
                    for o in self.conn.object_store.objects(self.container, prefix=prefix)
                ]
            except sdk.NotFoundException:
                return []

    def _inventory(self) -> dict[str, set[str]]:
        """This site's backups in the container: name -> the files stored under it."""
        found: dict[str, set[str]] = {}
        for rest in self._objects(self.site + SEPARATOR):
            name, _, file = rest.partition(SEPARATOR)
            if backup.BACKUP_NAME.match(name) and file:
                found.setdefault(name, set()).add(file)
        return found

    def _check_upload(self, key: str, file: Path) -> None:
        with self._errors(f"checking {key}"):
            meta = self.conn.object_store.get_object_metadata(key, container=self.container)
        size = file.stat().st_size
        stored = int(meta.content_length or 0)
        if stored != size:
            raise BackupError(f"{self._url(key)}: stored {stored} bytes, the file has {size}")
        if meta.is_static_large_object:
            return  # a large object's ETag is over its segments; the manifest checks the data
        digest = hashlib.md5(usedforsecurity=False)
        with file.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        if (meta.etag or "").strip('"') != digest.hexdigest():
            raise BackupError(f"{self._url(key)}: stored MD5 differs from the file's")

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        from cidemo_infra.cloud.connect import cloud_errors

        with cloud_errors(self.conn, f"object storage: {doing}"):
            yield


def store_for(site_container: str | None, cloud: str | None, site: str, path: Path) -> BackupStore:
    """The store a site names: its container (on cloud `cloud`) or the directory `path`."""
    if not site_container:
        return DirectoryStore(path)
    if not cloud:
        raise UsageError(
            "environments.backup_container needs `cloud`: the clouds.yaml entry whose object "
            "storage holds the backups"
        )
    from cidemo_infra.cloud.connect import connect

    return SwiftStore(connect(cloud, required=("object-store",)), site_container, site, path)
