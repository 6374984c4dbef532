"""Backup stores without a cloud: the directory store's listing, fetch and retention, and names.

The Swift store runs against the test cloud's object storage in
tests/integration/test_environments.py (refresh-staging through a container)."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path

import pytest

from cidemo_infra.backups import backup
from cidemo_infra.backups.backup import BackupError
from cidemo_infra.backups.store import DirectoryStore, check_name, store_for
from cidemo_infra.errors import UsageError

pytestmark = pytest.mark.unit


def fake_backup(root: Path, name: str, complete: bool = True) -> Path:
    """A directory shaped like a backup (the store only looks at names and the manifest)."""
    path = root / name
    path.mkdir(parents=True)
    (path / "posts.jsonl.gz").write_bytes(b"rows")
    if complete:
        (path / backup.MANIFEST).write_text("{}")
    return path


KEY = b"k" * 43


def valid_backup(root: Path, name: str) -> Path:
    """A backup that passes verify_backup: the manifest of a database without tables."""
    path = root / name
    path.mkdir(parents=True)
    database, stamp = name.rsplit("-", 1)
    created = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    manifest = {"database": database, "created": created.isoformat(), "tables": [], "format": 2}
    manifest["key_id"] = backup.key_id(KEY)
    manifest["hmac_sha256"] = backup.manifest_mac(manifest, KEY)
    (path / backup.MANIFEST).write_text(json.dumps(manifest))
    return path


def test_listing_is_newest_first_and_only_complete_backups(tmp_path: Path) -> None:
    for stamp in ("20261101T000000Z", "20261103T000000Z", "20261102T000000Z"):
        fake_backup(tmp_path, f"guestbook-{stamp}")
    fake_backup(tmp_path, "guestbook-20261104T000000Z", complete=False)  # broken off
    fake_backup(tmp_path, ".guestbook-20261105T000000Z.x.partial")
    fake_backup(tmp_path, "other_app-20261106T000000Z")
    store = DirectoryStore(tmp_path)
    assert [b.name for b in store.backups("guestbook")] == [
        "guestbook-20261103T000000Z",
        "guestbook-20261102T000000Z",
        "guestbook-20261101T000000Z",
    ]
    assert store.backups()[0].name == "other_app-20261106T000000Z"
    assert store.backups("guestbook")[0].where == str(tmp_path / "guestbook-20261103T000000Z")


def test_prune_keeps_the_newest_of_one_database_only(tmp_path: Path) -> None:
    names = [f"guestbook-2026110{d}T000000Z" for d in range(1, 6)]
    for name in names:
        fake_backup(tmp_path, name)
    fake_backup(tmp_path, "other_app-20261001T000000Z")
    store = DirectoryStore(tmp_path)
    assert store.prune("guestbook", 2) == [names[2], names[1], names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        names[3],
        names[4],
        "other_app-20261001T000000Z",
    ]
    assert store.prune("guestbook", 2) == []


def test_fetch_gives_the_directory_and_refuses_an_unknown_or_incomplete_one(
    tmp_path: Path,
) -> None:
    fake_backup(tmp_path, "guestbook-20261101T000000Z")
    fake_backup(tmp_path, "guestbook-20261102T000000Z", complete=False)
    store = DirectoryStore(tmp_path)
    with store.fetch("guestbook-20261101T000000Z") as path:
        assert path == tmp_path / "guestbook-20261101T000000Z"
    for name in ("guestbook-20261102T000000Z", "guestbook-20261109T000000Z"):
        with pytest.raises(BackupError, match="no such complete backup"), store.fetch(name):
            pass


@pytest.mark.parametrize(
    "name",
    [
        "../etc",
        "guestbook",
        "guestbook-2026-11-01",
        "Guestbook-20261101T000000Z",
        "a/b-20261101T000000Z",
    ],
)
def test_a_name_the_tool_never_makes_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not one this tool makes"):
        check_name(name)
    with pytest.raises(UsageError), DirectoryStore(tmp_path).fetch(name):
        pass


def test_keep_accepts_only_a_backup_made_in_the_store(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    inside = valid_backup(tmp_path / "store", "guestbook-20261101T000000Z")
    assert store.keep(inside, KEY).where == str(inside)
    elsewhere = valid_backup(tmp_path / "elsewhere", "guestbook-20261101T000000Z")
    with pytest.raises(BackupError, match="not in the backup directory"):
        store.keep(elsewhere, KEY)


def test_keep_refuses_a_backup_of_another_key(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    inside = valid_backup(tmp_path / "store", "guestbook-20261101T000000Z")
    with pytest.raises(BackupError, match="authenticated with another key"):
        store.keep(inside, b"another key, of at least 32 characters")


def test_a_container_without_a_cloud_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs `cloud`"):
        store_for("backups", None, "demo", tmp_path)
    assert isinstance(store_for(None, None, "demo", tmp_path), DirectoryStore)


def test_an_unreachable_cloud_is_one_line_and_exit_1(tmp_path: Path, cidemo) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  gone:\n    auth:\n"
        f"      auth_url: http://127.0.0.1:{port}/v3\n"
        "      username: u\n      password: not-a-real-secret-4711\n      project_name: p\n"
        "      user_domain_name: Default\n      project_domain_name: Default\n"
    )
    site = tmp_path / "site.yaml"
    site.write_text("name: swiftless\ncloud: gone\nenvironments:\n  backup_container: backups\n")
    result = cidemo(
        "env",
        "backups",
        "--site",
        str(site),
        "--state-dir",
        str(tmp_path / "state"),
        env={"OS_CLIENT_CONFIG_FILE": str(clouds)},
    )
    assert result.rc == 1, result.err
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1, result.err
    assert "cloud 'gone': cannot reach the identity endpoint" in lines[0]
    assert "not-a-real-secret-4711" not in result.err + result.out
