"""Previews' databases as branches of snapshots, on the real engine and a real Galera cluster.

One provisioned site; staging's database is made on the cluster by the test (no staging app is
needed to snapshot it). The tests run in order: snapshots, previews branching from them, a
snapshot under staging's writes, forks (schema only, and a seed script), limits, `env down`.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pymysql
import pytest
import yaml

from cidemo_infra import image_registry
from cidemo_infra.console import Reporter
from cidemo_infra.databases import branches, snapshots
from cidemo_infra.databases.snapshots import LIVE_DATADIR, SNAPSHOT_MOUNT, START
from cidemo_infra.envs.locks import registry_push_lock, snapshot_lock
from cidemo_infra.pipeline import operations
from cidemo_infra.placement import branch_store
from cidemo_infra.placement.teardown import remove_site_apps
from cidemo_infra.site import load_site
from cidemo_infra.state import StateDir
from tests.conftest import REPO
from tests.integration.conftest import (
    TestSite,
    free_port,
    make_site,
    provision_converged,
    remove_site,
)

pytestmark = pytest.mark.integration

APP = "guestbook"
STAGE = "stage_guestbook"
OTHER = "other_app"  # another database on the cluster: never in a snapshot
SEED = "INSERT INTO entries (message) VALUES ('seeded for forks');\n"
BATCH = 5  # rows per transaction of the writer, whose amounts sum to zero


@pytest.fixture(scope="module")
def site(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestSite]:
    made = make_site(
        engine,
        tmp_path_factory.mktemp("branches"),
        environments={
            "app": APP,
            "app_port": 8080,
            "image": "cidemo/guestbook:{sha}",
            "build": str(REPO / "examples" / "guestbook"),
            "router_port": free_port(),
            "max_previews": 8,
            "preview_limits": {
                "app": {"cpus": 1.0, "memory_mb": 256},
                "database": {"cpus": 0.75, "memory_mb": 192},
            },
        },
    )
    made.data["services"]["registry"] = {"port": free_port()}
    made.path.write_text(yaml.safe_dump(made.data))
    try:
        result = provision_converged(made)
        assert result.rc == 0, result.err + result.out
        yield made
    finally:
        removed = remove_site_apps(engine, made.name)
        remove_site([engine], made.name)
        shutil.rmtree(f"/etc/docker/certs.d/{registry_address(made)}", ignore_errors=True)
    assert f"branch store {branch_store.STORE}/{made.name}" in removed
    assert not (Path(branch_store.STORE) / made.name).exists()


def root(site: TestSite) -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1",
        port=site.rw_port,
        user="root",
        password=site.secret("root_password"),
        autocommit=True,
        connect_timeout=5,
    )


def sql(conn: Any, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement, args or None)
        return list(cur.fetchall())


def branch(engine: docker.DockerClient, site: TestSite, pr: int) -> Any:
    return engine.containers.get(f"cidemo-{site.name}-db-pr-{pr}-{APP}")


def in_branch(container: Any, statement: str, user: str | None = None, password: str = "") -> str:
    """A statement in a preview's database: as root over its socket, or as the app's user over
    TCP (the password in the exec's environment: a test's shortcut, never the product's)."""
    cmd = ["mariadb", "-N", "-B", "-e", statement]
    env = None
    if user:
        cmd[1:1] = ["-h", "127.0.0.1", "-u", user]
        env = {"MYSQL_PWD": password}
    result = container.exec_run(cmd, environment=env)
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return str(result.output.decode().strip())


def env_cli(site: TestSite, *args: str, path: Path | None = None) -> Any:
    from tests.conftest import run_cidemo

    return run_cidemo(
        "env", *args, "--site", str(path or site.path), "--state-dir", str(site.state)
    )


def test_staging_and_another_database_on_the_cluster(site: TestSite) -> None:
    conn = root(site)
    for db in (STAGE, OTHER):
        sql(conn, f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
        sql(
            conn,
            f"CREATE TABLE {db}.entries (id INT AUTO_INCREMENT PRIMARY KEY, "
            "message VARCHAR(500) NOT NULL, created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        )
    sql(
        conn,
        f"CREATE TABLE {STAGE}.ledger (id INT AUTO_INCREMENT PRIMARY KEY, batch INT NOT NULL, "
        "amount INT NOT NULL, KEY (batch))",
    )
    sql(conn, f"CREATE VIEW {STAGE}.recent AS SELECT message FROM {STAGE}.entries")
    sql(conn, f"INSERT INTO {STAGE}.entries (message) VALUES ('staging 1'), ('staging 2')")
    sql(conn, f"INSERT INTO {OTHER}.entries (message) VALUES ('not staging')")
    conn.close()


def test_snapshot_holds_stagings_database_only(engine: docker.DockerClient, site: TestSite) -> None:
    result = env_cli(site, "snapshot")
    assert result.rc == 0, result.err
    refs = result.out.split()
    assert [r.split(":")[1].split("-")[0] for r in refs] == ["full", "schema"]
    image = engine.images.get(refs[0])
    labels = image.labels
    assert labels["io.cidemo.site"] == site.name
    assert labels["io.cidemo.role"] == "snapshot"
    assert labels["io.cidemo.snapshot.kind"] == "full"
    assert labels["io.cidemo.snapshot.source"] == STAGE
    assert (
        not image.attrs["Config"].get("Volumes")
        or "/var/lib/cidemo/branch" not in (image.attrs["Config"]["Volumes"])
    )
    # a branch of it by hand, as root: the store already holds the snapshot's files
    snap_dir = Path(branch_store.snapshot_dir(site.name, refs[0].rsplit(":", 1)[1]))
    assert (snap_dir / ".ready").is_file() and (snap_dir / "data" / "ibdata1").is_file()
    assert {p.stat().st_uid for p in (snap_dir / "data").rglob("*")} == {0}
    inspect_dir = branch_store.branch_dir(site.name, "test-inspect")
    box = engine.containers.run(
        refs[0],
        detach=True,
        tmpfs={"/var/lib/mysql": "size=64k"},
        volumes={
            str(snap_dir): {"bind": SNAPSHOT_MOUNT, "mode": "rw"},
            inspect_dir: {"bind": LIVE_DATADIR, "mode": "rw"},
        },
        labels={"io.cidemo.apps-of": site.name, "io.cidemo.role": "preview-db"},
    )
    try:
        from cidemo_infra.databases.branches import wait_ready

        wait_ready(box)
        databases = set(in_branch(box, "SHOW DATABASES").split())
        assert databases == {STAGE, "information_schema", "mysql", "performance_schema", "sys"}
        users = set(in_branch(box, "SELECT CONCAT(User, '@', Host) FROM mysql.global_priv").split())
        assert users <= {"root@localhost", "mysql@localhost", "mariadb.sys@localhost"}, users
        assert in_branch(box, f"SELECT COUNT(*) FROM {STAGE}.entries") == "2"
        assert in_branch(box, f"SELECT COUNT(*) FROM {STAGE}.recent") == "2"  # its definer dropped
    finally:
        box.remove(force=True, v=True)
        shutil.rmtree(inspect_dir, ignore_errors=True)
    # the root password the dump ran with is in no file of the snapshot's own layer
    password = site.secret("root_password").encode()
    layer = Path(image.attrs["GraphDriver"]["Data"]["UpperDir"])
    for path in layer.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert password not in path.read_bytes(), path


def test_previews_branch_and_their_writes_stay_their_own(
    engine: docker.DockerClient, site: TestSite
) -> None:
    for pr in (1, 2):
        result = env_cli(site, "up", "--pr", str(pr))
        assert result.rc == 0, result.err
        assert "database branched from cidemo-snapshot/" in result.err + result.out
    one, two = branch(engine, site, 1), branch(engine, site, 2)
    password = site.secret(f"app-db-pr-1-{APP}")
    in_branch(one, f"INSERT INTO {STAGE}.entries (message) VALUES ('preview 1')", "pr_1", password)
    assert in_branch(one, f"SELECT COUNT(*) FROM {STAGE}.entries") == "3"
    assert in_branch(two, f"SELECT COUNT(*) FROM {STAGE}.entries") == "2"
    conn = root(site)
    assert sql(conn, f"SELECT COUNT(*) FROM {STAGE}.entries")[0][0] == 2
    # the preview's user exists on its branch only, granted on its database only
    assert sql(conn, "SELECT User FROM mysql.user WHERE User LIKE 'pr\\_%%'") == []
    conn.close()
    shown = in_branch(one, "SHOW DATABASES", "pr_1", password).split()
    assert set(shown) == {"information_schema", STAGE}
    denied = one.exec_run(
        ["mariadb", "-h", "127.0.0.1", "-u", "pr_1", "-e", "SELECT 1"],
        environment={"MYSQL_PWD": site.secret(f"app-db-pr-2-{APP}")},
    )
    assert denied.exit_code != 0
    # the app reaches its branch by name; its password only as a secret file
    service = engine.api.inspect_service(f"cidemo-{site.name}-app-pr-1-{APP}")
    settings = dict(
        e.split("=", 1) for e in service["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    )
    assert settings["DB_HOST"] == one.name and settings["DB_NAME"] == STAGE
    assert settings["DB_USER"] == "pr_1" and "DB_PASS" not in settings
    for container in (one, two):
        assert password not in json.dumps(container.attrs["Config"])
        assert container.exec_run(["test", "-e", "/etc/cidemo-branch/init.sql"]).exit_code == 1


def shared_extents(path: Path) -> int:
    """Extents of `path` whose blocks another file shares (filefrag's FIEMAP `shared` flag)."""
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, check=True)
    return sum("shared" in line for line in out.stdout.splitlines())


def test_a_branch_is_a_reflink_copy_of_its_snapshot(
    engine: docker.DockerClient, site: TestSite
) -> None:
    one = branch(engine, site, 1)
    mounts = {m["Destination"]: m for m in one.attrs["Mounts"]}
    live = Path(mounts[LIVE_DATADIR]["Source"])
    assert live == Path(branch_store.branch_dir(site.name, f"pr-1-{APP}"))
    snap = Path(mounts[SNAPSHOT_MOUNT]["Source"]) / "data"
    # the table the preview did not write still shares every block with the snapshot's copy
    table = Path(STAGE) / "ledger.ibd"
    assert (live / table).stat().st_size == (snap / table).stat().st_size
    assert shared_extents(live / table) >= 1
    assert shared_extents(snap / table) >= 1
    # the branch's server (uid mysql) owns its copy, root the snapshot's
    assert (live / table).stat().st_uid != 0 and (snap / table).stat().st_uid == 0


def test_a_store_without_reflinks_is_refused(
    engine: docker.DockerClient, site: TestSite, tmp_path: Path
) -> None:
    plain = tmp_path / "ext4-snapshot"  # the test machine's own filesystem has no reflinks
    plain.mkdir()
    assert not branch_store.has_reflinks(plain)
    ref = branch(engine, site, 1).labels["io.cidemo.snapshot"]
    with pytest.raises(branch_store.StoreError, match="no reflinks in the branch store"):
        branch_store.run(
            engine,
            ref,
            [START, "--prepare"],
            "prepare",
            site=site.name,
            binds={str(plain): SNAPSHOT_MOUNT},
        )
    assert [p.name for p in plain.iterdir()] == [".lock"]  # nothing half-copied left


def test_a_branch_taken_during_staging_writes_is_consistent(
    engine: docker.DockerClient, site: TestSite
) -> None:
    stop = threading.Event()
    committed: list[int] = []

    def write() -> None:
        conn = root(site)
        batch = 0
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline and batch < 20000:
            batch += 1
            amounts = [batch, -batch, 2 * batch, -2 * batch, 0]
            conn.begin()
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {STAGE}.ledger (batch, amount) VALUES (%s, %s)",
                    [(batch, a) for a in amounts],
                )
            conn.commit()
            committed.append(batch)
        conn.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while len(committed) < 20:
            time.sleep(0.1)
        before = len(committed)
        result = env_cli(site, "snapshot", "--kind", "full")
        during = len(committed) - before
    finally:
        stop.set()
        writer.join(60)
    assert result.rc == 0, result.err
    assert during > 0, "staging's writes stopped while the snapshot was taken"
    assert env_cli(site, "up", "--pr", "3").rc == 0
    three = branch(engine, site, 3)
    assert three.labels["io.cidemo.snapshot"] == result.out.strip()
    broken = in_branch(
        three,
        f"SELECT batch FROM {STAGE}.ledger GROUP BY batch "
        f"HAVING COUNT(*) <> {BATCH} OR SUM(amount) <> 0",
    )
    assert broken == ""
    assert int(in_branch(three, f"SELECT COUNT(DISTINCT batch) FROM {STAGE}.ledger")) >= 20


def test_a_forks_preview_gets_the_schema_with_no_rows(
    engine: docker.DockerClient, site: TestSite
) -> None:
    result = env_cli(site, "up", "--pr", "4", "--fork")
    assert result.rc == 0, result.err
    four = branch(engine, site, 4)
    assert ":schema-" in four.labels["io.cidemo.snapshot"]
    tables = set(in_branch(four, f"SHOW TABLES FROM {STAGE}").split())
    assert {"entries", "ledger", "recent"} <= tables
    assert in_branch(four, f"SELECT COUNT(*) FROM {STAGE}.entries") == "0"
    assert in_branch(four, f"SELECT COUNT(*) FROM {STAGE}.ledger") == "0"


def test_a_seed_script_fills_a_forks_preview(
    engine: docker.DockerClient, site: TestSite, tmp_path: Path
) -> None:
    data = dict(site.data)
    data["environments"] = {**data["environments"], "fork_data": "seed", "fork_script": "seed.sql"}
    seeded = site.path.parent / "seeded.yaml"
    (site.path.parent / "seed.sql").write_text(SEED)
    seeded.write_text(yaml.safe_dump(data))
    result = env_cli(site, "up", "--pr", "5", "--fork", path=seeded)
    assert result.rc == 0, result.err
    five = branch(engine, site, 5)
    assert ":seed-" in five.labels["io.cidemo.snapshot"]
    assert in_branch(five, f"SELECT message FROM {STAGE}.entries") == "seeded for forks"
    assert in_branch(five, f"SELECT COUNT(*) FROM {STAGE}.ledger") == "0"


def test_a_snapshot_being_taken_does_not_hold_up_a_new_preview(
    engine: docker.DockerClient, site: TestSite
) -> None:
    with snapshot_lock(StateDir(site.state, site.name), "full", wait=5):
        result = env_cli(site, "up", "--pr", "6")
    assert result.rc == 0, result.err
    assert branch(engine, site, 6).status == "running"


def test_limits_are_applied(engine: docker.DockerClient, site: TestSite) -> None:
    host = branch(engine, site, 1).attrs["HostConfig"]
    assert host["NanoCpus"] == 750_000_000
    assert host["Memory"] == host["MemorySwap"] == 192 << 20
    service = engine.api.inspect_service(f"cidemo-{site.name}-app-pr-1-{APP}")
    limits = service["Spec"]["TaskTemplate"]["Resources"]["Limits"]
    assert limits == {"NanoCPUs": 1_000_000_000, "MemoryBytes": 256 << 20}
    for member in engine.containers.list(
        filters={"label": [f"io.cidemo.site={site.name}", "io.cidemo.role=galera"]}
    ):
        assert member.attrs["HostConfig"]["CpuShares"] == 4096
        assert member.attrs["HostConfig"]["MemoryReservation"] == 1024 << 20


def test_env_list_shows_the_snapshot_of_each_preview(site: TestSite) -> None:
    result = env_cli(site, "list", "--json")
    assert result.rc == 0, result.err
    rows = {r["name"]: r for r in json.loads(result.out)}
    assert rows[f"pr-1-{APP}"]["snapshot"].startswith(
        f"cidemo-snapshot/{site.name}-stage-{APP}:full-"
    )
    assert ":schema-" in rows[f"pr-4-{APP}"]["snapshot"]


def registry_address(site: TestSite) -> str:
    return f"127.0.0.1:{site.data['services']['registry']['port']}"


def registry_call(site: TestSite, path: str, method: str = "GET") -> tuple[int, bytes]:
    """The site registry's API over HTTPS, verified against the site CA, as the user `cidemo`."""
    context = ssl.create_default_context(cafile=str(site.state / "tls" / "ca.pem"))
    request = urllib.request.Request(f"https://{registry_address(site)}/v2/{path}", method=method)
    token = base64.b64encode(f"cidemo:{site.secret('registry_password')}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Accept", image_registry.MANIFEST_TYPES)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_a_snapshot_reaches_another_engine_through_the_site_registry(
    engine: docker.DockerClient, site: TestSite, second_engine: tuple[str, docker.DockerClient]
) -> None:
    """An engine without the snapshot pulls it from the site registry (pushed once), a branch
    starts there from it, and the next refresh deletes it from the registry, blobs and all."""
    _, spare = second_engine
    loaded = load_site(site.path)
    with operations.open_envs(loaded, StateDir(site.state, site.name), Reporter(quiet=True)) as ctx:
        route = operations.snapshot_route(ctx)
        assert route is not None and route.address == registry_address(site)
        snap = snapshots.current(engine, site.name, "full")
        assert snap is not None
        assert snapshots.ship(engine, {"spare": spare}, snap.ref, route) == ["spare"]
        assert snapshots.ship(engine, {"spare": spare}, snap.ref, route) == []  # it has it now
    assert spare.images.get(snap.ref).id == snap.image_id  # the same image, labels and all
    repo = snapshots.repository(site.name, f"stage-{APP}")
    status, body = registry_call(site, f"{repo}/tags/list")
    assert status == 200 and json.loads(body)["tags"] == [snap.short]
    status, body = registry_call(site, f"{repo}/manifests/{snap.short}")
    assert status == 200
    own_layer = json.loads(body)["layers"][-1]["digest"]  # the snapshot's files
    # a branch on the second engine, reached on its published port as the app's user
    env, password = f"pr-90-{APP}", secrets.token_urlsafe(16)
    made = branches.create(
        spare,
        branches.Placement("spare", "spare", None, publish_on="127.0.0.1"),
        site=site.name,
        env=env,
        snapshot=snap,
        database=STAGE,
        user="pr_90",
        password=password,
        limits=branches.Limits(0.5, 192),
    )
    try:
        conn = pymysql.connect(
            host=made.host, port=made.port, user="pr_90", password=password, connect_timeout=5
        )
        assert sql(conn, f"SELECT COUNT(*) FROM {STAGE}.entries")[0][0] >= 2
        conn.close()
    finally:
        assert branches.remove({"spare": spare}, site.name, env)
    # a refresh: the registry keeps the current snapshots only, and collects the old one's blobs
    result = env_cli(site, "snapshot")
    assert result.rc == 0, result.err
    assert f"older snapshots deleted ({snap.short})" in result.err
    assert registry_call(site, f"{repo}/manifests/{snap.short}")[0] == 404
    assert registry_call(site, f"{repo}/blobs/{own_layer}", method="HEAD")[0] == 404
    assert not (site.state / operations.GARBAGE_PENDING).exists()
    # while a push holds the registry, a refresh deletes tags but leaves the blobs to the next
    state = StateDir(site.state, site.name)
    with operations.open_envs(loaded, state, Reporter(quiet=True)) as ctx:
        newer = snapshots.current(engine, site.name, "full")
        assert newer is not None and newer.ref != snap.ref
        route = operations.snapshot_route(ctx)
        assert snapshots.ship(engine, {"spare": spare}, newer.ref, route) == ["spare"]
    status, body = registry_call(site, f"{repo}/manifests/{newer.short}")
    newer_layer = json.loads(body)["layers"][-1]["digest"]
    with registry_push_lock(state):
        held = env_cli(site, "snapshot")
    assert held.rc == 0, held.err
    assert f"older snapshots deleted ({newer.short})" in held.err
    assert "a push is under way; its garbage is collected later" in held.err
    assert (site.state / operations.GARBAGE_PENDING).exists()
    assert registry_call(site, f"{repo}/blobs/{newer_layer}", method="HEAD")[0] == 200
    freed = env_cli(site, "snapshot")
    assert freed.rc == 0, freed.err
    assert registry_call(site, f"{repo}/blobs/{newer_layer}", method="HEAD")[0] == 404
    assert not (site.state / operations.GARBAGE_PENDING).exists()


def test_env_down_leaves_no_container_and_no_volume(
    engine: docker.DockerClient, site: TestSite
) -> None:
    one = branch(engine, site, 1)
    assert not [m for m in one.attrs["Mounts"] if m["Type"] == "volume"]
    live = Path(branch_store.branch_dir(site.name, f"pr-1-{APP}"))
    assert (live / STAGE).is_dir()
    result = env_cli(site, "down", "--pr", "1", "--yes")
    assert result.rc == 0, result.err
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(one.id)
    assert not engine.api.containers(all=True, filters={"label": f"io.cidemo.env=pr-1-{APP}"})
    assert not live.exists()  # its writes went with it
    assert not engine.api.containers(all=True, filters={"label": "io.cidemo.role=branch-store"})
    assert branch(engine, site, 2).status == "running"
