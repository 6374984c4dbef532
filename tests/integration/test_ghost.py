"""Ghost, the 2015 platform's own app, on the platform: a staging environment and a preview, each
on its own database of the site's MariaDB Galera cluster, the preview looked at in a real browser.

The image is examples/ghost (Ghost 5 from the npm registry on Debian's Node.js, built on the
project's base image), built while the site provisions. The browser is Debian's chromium, headless
(scripts/ensure-chromium.sh installs it when missing); it reaches the router on 127.0.0.1 with the
environments' host names mapped there. The preview's screenshot is kept as a test artifact in
CIDEMO_TEST_ARTIFACTS (default tests/artifacts/) and its path printed.

The tests share one site and run in order: staging first (Ghost migrates its empty database),
then the preview (a clone of staging's database), then a post through the preview's Admin API.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import pymysql
import pytest
import yaml

from cidemo_infra import images
from cidemo_infra.console import Reporter
from cidemo_infra.placement.teardown import remove_site_apps
from tests.conftest import REPO, Run, need, run_cidemo
from tests.integration.conftest import TestSite, free_port, make_site, remove_site
from tests.support import ghost_admin

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("CIDEMO_GHOST") != "1",
        reason="Ghost's build and the browser: make test-ghost (CIDEMO_GHOST=1)",
    ),
]

GHOST = REPO / "examples" / "ghost"
APP = "ghost"
DOMAIN = "cidemo.test"
SHA = secrets.token_hex(20)
PR = 7
PREVIEW, STAGING = f"pr-{PR}-{APP}", f"stage-{APP}"
PREVIEW_DB, STAGING_DB = f"pr_{PR}", f"stage_{APP}"
WAIT = 300.0
BODY = "Only in this preview."
GENERATOR = re.compile(r'<meta name="generator" content="Ghost 5\.\d+">')
ARTIFACTS = Path(os.environ.get("CIDEMO_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
T = TypeVar("T")


def answering(platform: Platform, env: str) -> str | None:
    """The environment's home page once it answers 200 through the router."""
    status, page = platform.get(env)
    return page if status == 200 and isinstance(page, str) else None


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception as exc:  # an app starting answers with errors on the way
            got, last = None, f"{type(exc).__name__}: {exc}"
        if got is not None:
            return got
        time.sleep(1.0)
    pytest.fail(f"{what} not within {timeout:.0f} s (last: {last})")


@dataclass
class Platform:
    site: TestSite
    router_port: int
    browser: str
    engine: docker.DockerClient

    def env(self, *args: str) -> Run:
        return run_cidemo(
            "env", *args, "--site", str(self.site.path), "--state-dir", str(self.site.state)
        )

    def host(self, env: str) -> str:
        return f"{env}.{DOMAIN}"

    def url(self, env: str, path: str = "/") -> str:
        return f"http://{self.host(env)}:{self.router_port}{path}"

    def get(self, env: str, path: str = "/", **kw: Any) -> tuple[int, Any]:
        return ghost_admin.request(self.router_port, self.host(env), "GET", path, **kw)

    def root(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.site.rw_port,
            user="root",
            password=self.site.secret("root_password"),
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def query(self, sql: str, *args: Any, database: str | None = None) -> list[tuple[Any, ...]]:
        conn = self.root(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def tables(self, database: str) -> list[str]:
        rows = self.query(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
            "ORDER BY TABLE_NAME",
            database,
        )
        return [r[0] for r in rows]

    def chromium(self, *args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
        """Headless chromium with every environment's host name resolved to the router."""
        return subprocess.run(
            [
                self.browser,
                "--headless",
                "--no-sandbox",  # tests run as root; chromium's sandbox refuses root
                "--disable-gpu",
                "--no-first-run",
                "--no-proxy-server",
                f"--user-data-dir={tmp / 'chromium-profile'}",
                f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1",
                "--window-size=1280,1000",
                "--virtual-time-budget=10000",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def rendered(self, env: str, tmp: Path) -> str:
        """The page's DOM after chromium has loaded it and run its scripts, once it is Ghost's
        (the router answers 503 while its health check finds no task, e.g. one restarting)."""

        def dom() -> str | None:
            result = self.chromium("--dump-dom", self.url(env), tmp=tmp)
            assert result.returncode == 0, result.stderr[-2000:]
            return result.stdout if GENERATOR.search(result.stdout) else None

        return wait_for(f"{env} rendered by chromium ({self.tasks(env)})", dom, 120)

    def screenshot(self, env: str, suffix: str, tmp: Path) -> Path:
        """The page as chromium shows it, kept in ARTIFACTS; its path is printed."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"ghost-{env}-{self.site.name}{suffix}.png"
        shot.unlink(missing_ok=True)
        result = self.chromium(f"--screenshot={shot}", self.url(env), tmp=tmp)
        assert result.returncode == 0, result.stderr[-2000:]
        print(f"screenshot of {self.url(env)}: {shot}")
        return shot

    def tasks(self, env: str) -> str:
        """The Swarm tasks of an environment's service, for failure messages."""
        name = f"cidemo-{self.site.name}-app-{env}"
        tasks = self.engine.api.tasks(filters={"service": name})
        return "; ".join(
            f"{t['Status']['State']} {t['Status'].get('Err', '')}".strip() for t in tasks
        )


@pytest.fixture(scope="module")
def browser() -> str:
    """Debian's chromium; scripts/ensure-chromium.sh installs it (as root) when missing."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "ensure-chromium.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    need(result.returncode == 0, f"chromium ({result.stderr.strip()})")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def ghost_image(engine: docker.DockerClient) -> Iterator[concurrent.futures.Future[str]]:
    """examples/ghost built as cidemo/ghost:<sha> in the background (it takes minutes cold),
    while the site provisions; untagged afterwards, its layers kept as the next run's cache."""
    tag = f"cidemo/ghost:{SHA}"
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    built = pool.submit(
        images.build_app_image,
        engine,
        GHOST,
        tag,
        Reporter(quiet=True),
        build_args={"APP_VERSION": SHA},
        labels={"io.cidemo.test": "ghost"},
    )
    try:
        yield built
    finally:
        pool.shutdown(wait=True)
        with contextlib.suppress(docker.errors.APIError):
            engine.images.remove(tag, noprune=True)


@pytest.fixture(scope="module")
def platform(
    engine: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
    ghost_image: concurrent.futures.Future[str],
    browser: str,
) -> Iterator[Platform]:
    router_port = free_port()
    site = make_site(
        engine,
        tmp_path_factory.mktemp("ghost"),
        domain=DOMAIN,
        environments={
            "app": APP,
            "app_port": 2368,
            "image": "cidemo/ghost:{sha}",
            "router_port": router_port,
            "max_previews": 1,
        },
    )
    # Ghost's first start runs 75 CREATE TABLEs and its fixtures: on a loaded machine a member's
    # 10 s registration can lapse meanwhile, the proxy then drops Ghost's connection and Ghost
    # dies holding its migration lock (examples/ghost/README.md); 30 s rides that out
    site.data["services"]["galera"]["ttl"] = 30
    site.path.write_text(yaml.safe_dump(site.data))
    try:
        result = site.cidemo("provision")
        assert result.rc == 0, result.err + result.out
        ghost_image.result(timeout=1800)
        yield Platform(site, router_port, browser, engine)
    finally:
        keep_logs(engine, site)
        remove_site_apps(engine, site.name)
        remove_site([engine], site.name)


def keep_logs(engine: docker.DockerClient, site: TestSite) -> None:
    """Each Ghost service's log beside the screenshot, for a failure in CI."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for env in (STAGING, PREVIEW):
        with contextlib.suppress(docker.errors.APIError):
            lines = engine.api.service_logs(
                f"cidemo-{site.name}-app-{env}", stdout=True, stderr=True, timestamps=True
            )
            (ARTIFACTS / f"ghost-{env}-{site.name}.log").write_bytes(b"".join(lines))


def member_tables(engine: docker.DockerClient, site: TestSite, database: str) -> dict[str, int]:
    """The number of tables of `database` as each Galera member sees it (root on its socket)."""
    counts = {}
    flt = {"label": [f"io.cidemo.site={site.name}", "io.cidemo.role=galera"]}
    for member in engine.containers.list(filters=flt):
        sql = f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{database}'"
        code, out = member.exec_run(["mariadb", "-N", "-e", sql])
        assert code == 0, out
        counts[member.name] = int(out.decode().strip())
    return counts


def test_staging_runs_ghost_on_a_database_it_migrates(
    engine: docker.DockerClient, platform: Platform
) -> None:
    result = platform.env("up", "--staging", "--ref", SHA)
    assert result.rc == 0, result.err + result.out
    page = wait_for(f"{STAGING} answering", lambda: answering(platform, STAGING))
    assert "<title>" in page and 'content="Ghost 5.' in page, page[:500]
    tables = platform.tables(STAGING_DB)
    assert {"posts", "users", "settings", "api_keys", "integrations", "members"} <= set(tables)
    counts = member_tables(engine, platform.site, STAGING_DB)
    assert len(counts) == 3 and set(counts.values()) == {len(tables)}, counts


def test_preview_runs_on_a_clone_of_stagings_database(
    engine: docker.DockerClient, platform: Platform
) -> None:
    result = platform.env("up", "--pr", str(PR), "--ref", SHA)
    assert result.rc == 0, result.err + result.out
    assert f"cloned {STAGING_DB} into {PREVIEW_DB}" in result.out + result.err
    assert platform.tables(PREVIEW_DB) == platform.tables(STAGING_DB)
    page = wait_for(f"{PREVIEW} answering", lambda: answering(platform, PREVIEW))
    assert f'href="{platform.url(PREVIEW)}"' in page, page[:2000]


def test_preview_home_page_renders_in_chromium(platform: Platform, tmp_path: Path) -> None:
    wait_for(f"{PREVIEW} answering", lambda: answering(platform, PREVIEW), 120)
    shot = platform.screenshot(PREVIEW, "", tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1000)
    dom = platform.rendered(PREVIEW, tmp_path)
    assert 'class="gh-head' in dom or 'class="site-header' in dom, dom[:2000]


def admin_key(platform: Platform, database: str) -> str:
    """The Admin API key of Ghost's own Zapier integration (a fixture Ghost creates on its first
    migration), read from the environment's database: `<id>:<secret>`."""
    rows = platform.query(
        "SELECT k.id, k.secret FROM api_keys k JOIN integrations i ON i.id = k.integration_id "
        "WHERE i.slug = 'zapier' AND k.type = 'admin'",
        database=database,
    )
    assert len(rows) == 1, rows
    return f"{rows[0][0]}:{rows[0][1]}"


def test_a_post_created_in_the_preview_shows_there_and_not_in_staging(
    platform: Platform, tmp_path: Path
) -> None:
    title = f"Written in preview {PR} {secrets.token_hex(4)}"
    key = admin_key(platform, PREVIEW_DB)
    post = {"title": title, "lexical": ghost_admin.lexical(BODY), "status": "published"}

    def create() -> tuple[int, Any] | None:
        answer = ghost_admin.request(
            platform.router_port,
            platform.host(PREVIEW),
            "POST",
            "/ghost/api/admin/posts/",
            {"posts": [post]},
            key=key,
        )
        # the router's own answers when no task answered it (one restarting, say); a retried
        # post that did get through makes a second post "<slug>-2", also only in the preview
        return None if answer[0] in (502, 503, 504) else answer

    status, body = wait_for(f"{PREVIEW}'s Admin API", create, 120)
    assert status == 201, body
    slug = body["posts"][0]["slug"]
    assert body["posts"][0]["url"] == platform.url(PREVIEW, f"/{slug}/")

    wait_for(
        f"the post on {PREVIEW}'s home page", lambda: title in platform.get(PREVIEW)[1] or None
    )
    assert title in platform.rendered(PREVIEW, tmp_path)
    platform.screenshot(PREVIEW, "-with-post", tmp_path)
    assert BODY in platform.get(PREVIEW, f"/{slug}/")[1]

    staging = wait_for(f"{STAGING} answering", lambda: answering(platform, STAGING), 120)
    assert GENERATOR.search(staging) and title not in staging
    assert title not in platform.rendered(STAGING, tmp_path)
    assert platform.get(STAGING, f"/{slug}/")[0] == 404
    assert platform.query("SELECT title FROM posts WHERE title = %s", title, database=PREVIEW_DB)
    assert not platform.query(
        "SELECT title FROM posts WHERE title = %s", title, database=STAGING_DB
    )
