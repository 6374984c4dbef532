"""`make bench`, environments: `cidemo env up` of 1 and of 5 previews at once, each against its
floor from the same run (what no tool can beat: the preview's database container by hand, the
same image, limits, network and branch store, until its server answers; then the same Swarm
service spec created by hand, until its task runs), and a no-op `env up`.

`run` needs a provisioned local site with an environments section whose `max_previews` is at
least 6 (the lead's bench site); it builds examples/guestbook (not timed), seeds the staging
database with STAGE_ROWS guestbook entries (not timed) so that every new preview clones it, deploys
previews of made-up pull requests 9001-9006 and removes everything it made, also when it fails.
Timings are measured here and never asserted by tests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from cidemo_infra import images
from cidemo_infra.console import Reporter
from cidemo_infra.databases import branches
from cidemo_infra.databases.database import connect, database_exists, execute, quote_ident
from cidemo_infra.databases.snapshots import LIVE_DATADIR
from cidemo_infra.engines import client_for
from cidemo_infra.errors import UsageError
from cidemo_infra.pipeline.operations import staging_database
from cidemo_infra.placement import branch_store
from cidemo_infra.placement.specs import apps_domain, has_router
from cidemo_infra.platforms.swarm import service_name
from cidemo_infra.site import load_site

REPO = Path(__file__).resolve().parents[2]
GUESTBOOK = REPO / "examples" / "guestbook"
FIRST_PR = 9001
CONCURRENT = 5
STAGE_ROWS = 5000  # ~1 MB: a small blog's staging database
TIMEOUT = 600.0
CIDEMO = (sys.executable, "-m", "cidemo_infra")


def run(
    site_path: str | Path, state_dir: str | Path, cidemo: Sequence[str] = CIDEMO
) -> list[list[str]]:
    """Rows of (measurement, cidemo, baseline, ratio); `cidemo` is the command to run."""
    site = load_site(str(site_path))
    if site.target != "local" or not has_router(site):
        raise UsageError(f"{site_path}: the bench needs a local site with an environments section")
    if site.environments.max_previews < CONCURRENT + 1:
        raise UsageError(
            f"{site_path}: environments.max_previews is {site.environments.max_previews}; "
            f"the bench deploys {CONCURRENT + 1} previews"
        )
    client = client_for(images.LOCAL_ENGINE, node="local")
    sha = secrets.token_hex(20)
    tag = f"cidemo/guestbook:bench-{sha[:12]}"
    prs = list(range(FIRST_PR, FIRST_PR + CONCURRENT + 1))
    by_hand: list[str] = []
    dbs_by_hand: list[tuple[str, str]] = []

    def env(*args: str) -> float:
        return _timed(
            [*cidemo, "env", *args, "--site", str(site_path), "--state-dir", str(state_dir)]
        )

    def up(pr: int) -> float:
        return env("up", "--pr", str(pr), "--ref", sha, "--image", tag, "--lock-wait", "60")

    stage = staging_database(site.environments.app)
    conn = connect(
        "127.0.0.1",
        site.services.proxy.rw_port,
        "root",
        (Path(state_dir) / "secrets" / "root_password").read_text().strip(),
    )
    if database_exists(conn, stage):
        conn.close()
        raise UsageError(f"{site_path}: the bench needs a site without a staging database")
    try:
        _seed_staging(conn, stage)
        images.build_app_image(
            client, GUESTBOOK, tag, Reporter(quiet=True), build_args={"APP_VERSION": sha}
        )
        env("snapshot")  # untimed: staging's snapshot, as `env up --staging` would have taken it
        one = up(prs[0])
        host = f"pr-{prs[0]}-{site.environments.app}.{apps_domain(site)}"
        routed = one + _until_routed(site.environments.router_port, host)
        noop = min(up(prs[0]) for _ in range(3))
        with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
            start = time.monotonic()
            list(pool.map(up, prs[1:]))
            many = time.monotonic() - start
        first = f"pr-{prs[0]}-{site.environments.app}"
        spec = client.api.inspect_service(service_name(site.name, first))["Spec"]
        database = client.api.inspect_container(branches.container_name(site.name, first))
        floor_one = _by_hand(client, site.name, spec, database, 1, by_hand, dbs_by_hand)
        floor_many = _by_hand(client, site.name, spec, database, CONCURRENT, by_hand, dbs_by_hand)
    finally:
        for name in by_hand:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_service(name)
        _until_gone(client, by_hand)  # they mount the first preview's secrets
        for name, image in dbs_by_hand:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(name, force=True, v=True)
            branch_store.remove_branch(client, image, site.name, name)
        for pr in prs:
            with contextlib.suppress(subprocess.CalledProcessError):
                env("down", "--pr", str(pr), "--yes", "--lock-wait", "60")
        # still used by a stopping task: an untagged image is harmless
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(tag)
        execute(conn, f"DROP DATABASE IF EXISTS {quote_ident(stage)}")
        conn.close()
    return [
        [
            f"env up, 1 new preview (branch of {STAGE_ROWS} rows, user, secret, service)",
            f"{one:.1f} s (routed {routed:.1f} s)",
            f"floor: its database and service by hand, {floor_one:.1f} s",
            f"{one / floor_one:.2f}x (goal <= 1.3x)",
        ],
        [
            f"env up, {CONCURRENT} new previews at once",
            f"{many:.1f} s",
            f"floor: {CONCURRENT} databases and services by hand at once, {floor_many:.1f} s",
            f"{many / floor_many:.2f}x",
        ],
        ["env up, no change", f"{noop:.2f} s", "-", "-"],
    ]


def _seed_staging(conn: Any, database: str) -> None:
    """The staging database a preview is cloned from: guestbook's table with STAGE_ROWS rows."""
    execute(conn, f"CREATE DATABASE {quote_ident(database)} CHARACTER SET utf8mb4")
    execute(
        conn,
        f"CREATE TABLE {quote_ident(database)}.entries (id INT AUTO_INCREMENT PRIMARY KEY, "
        "message VARCHAR(500) NOT NULL, created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    rows = [(f"staging entry {i}: " + "x" * 200,) for i in range(STAGE_ROWS)]
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {quote_ident(database)}.entries (message) VALUES (%s)", rows)


def _timed(argv: Sequence[str]) -> float:
    start = time.monotonic()
    subprocess.run(
        list(argv),
        check=True,
        capture_output=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=TIMEOUT,
        cwd=REPO,
    )
    return time.monotonic() - start


def _until_gone(client: docker.DockerClient, services: list[str]) -> None:
    deadline = time.monotonic() + 60
    for name in services:
        flt = {"label": f"com.docker.swarm.service.name={name}"}
        while client.api.containers(all=True, filters=flt) and time.monotonic() < deadline:
            time.sleep(0.2)


def _until_routed(port: int, host: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < 60:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz", headers={"Host": host})
            if conn.getresponse().status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise TimeoutError(f"bench: {host} not routed within 60 s")


def _by_hand(
    client: docker.DockerClient,
    site: str,
    spec: dict[str, Any],
    database: dict[str, Any],
    count: int,
    made: list[str],
    dbs_made: list[tuple[str, str]],
) -> float:
    """`count` previews by hand, all at once: each a database container like `database` (its
    image, limits, network, a branch directory of its own in the store) until its server
    answers, then a service with `spec`'s task template until its task runs."""
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        list(
            pool.map(
                lambda _: _one_by_hand(client, site, spec, database, made, dbs_made), range(count)
            )
        )
    return time.monotonic() - start


def _one_by_hand(
    client: docker.DockerClient,
    site: str,
    spec: dict[str, Any],
    database: dict[str, Any],
    made: list[str],
    dbs_made: list[tuple[str, str]],
) -> None:
    name = f"cidemo-bench-floor-{secrets.token_hex(3)}"
    image = str(database["Config"]["Image"])
    host = database["HostConfig"]
    mounts = {m["Destination"]: m["Source"] for m in database["Mounts"] if m["Type"] == "bind"}
    mounts[LIVE_DATADIR] = branch_store.branch_dir(site, name)
    dbs_made.append((name, image))
    box = client.containers.run(
        image,
        command=database["Config"]["Cmd"],
        name=name,
        detach=True,
        init=True,
        volumes={source: {"bind": inside, "mode": "rw"} for inside, source in mounts.items()},
        tmpfs=host.get("Tmpfs") or {},
        nano_cpus=host["NanoCpus"],
        mem_limit=host["Memory"],
        memswap_limit=host["MemorySwap"],
        network=next(iter(database["NetworkSettings"]["Networks"])),
        labels={"io.cidemo.bench": "envs"},
    )
    deadline = time.monotonic() + TIMEOUT
    while box.exec_run(["mariadb-admin", "ping"]).exit_code != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {name} did not answer in time")
        time.sleep(0.05)
    client.api.create_service(
        spec["TaskTemplate"],
        name=name,
        labels={"io.cidemo.bench": "envs"},
        mode=docker.types.ServiceMode("replicated", replicas=1),
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
    )
    made.append(name)
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: service {name} not running in time")
        tasks = client.api.tasks(filters={"service": name, "desired-state": "running"})
        if any(t["Status"]["State"] == "running" for t in tasks):
            return
        time.sleep(0.1)
