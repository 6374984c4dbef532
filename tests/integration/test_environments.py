"""Environments end to end on the real engine: GitHub deliveries to the real `cidemo webhook
serve`, previews on their own branches of staging's database behind the router, staging,
production, limits, garbage collection and the staging refresh.

The tests of this module share one provisioned site and run in order, as a team's day would. The
app is examples/guestbook, built offline and tagged for two made-up commits whose pages differ.
GitHub is not involved: deliveries are the fixtures of tests/data/github, rewritten (numbers,
commits) and signed with the site's webhook secret.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import pymysql
import pytest
import yaml

from cidemo_infra import images
from cidemo_infra.console import Reporter
from cidemo_infra.envs import records
from cidemo_infra.placement.teardown import remove_site_apps
from cidemo_infra.state import StateDir
from cidemo_infra.webhook.signature import sign
from tests.conftest import REPO, Run
from tests.integration.conftest import (
    TestSite,
    free_port,
    make_site,
    provision_converged,
    remove_site,
)
from tests.support.http_page import page
from tests.support.recording_github import RecordingGitHub

pytestmark = pytest.mark.integration

GITHUB = REPO / "tests" / "data" / "github"
GUESTBOOK = REPO / "examples" / "guestbook"
APP = "guestbook"
DOMAIN = "cidemo.test"
WAIT = 240.0  # seconds for a delivery to become a running environment
SHA_A, SHA_B, SHA_C = (secrets.token_hex(20) for _ in range(3))
PR_ONE, PR_TWO = 11, 12
GITHUB_TOKEN = "ghp_" + secrets.token_hex(18)  # a made-up token the recording server checks
# `cidemo env` is registered in the CLI by the lead; this runs the same entry point with it added.
ENV_CLI = (
    "import sys; from cidemo_infra.cli import cli, main; "
    "from cidemo_infra.pipeline.commands import env; cli.add_command(env); main(sys.argv[1:])"
)
T = TypeVar("T")


@dataclass
class Env:
    site: TestSite
    webhook: str  # http://127.0.0.1:<port>/github
    secret: str
    router_port: int
    github: RecordingGitHub  # NOT GitHub: records the commit statuses the server posts
    sent: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)

    def cli(self, *args: str, site: Path | None = None, timeout: float = 600) -> Run:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                ENV_CLI,
                "env",
                *args,
                "--site",
                str(site or self.site.path),
                "--state-dir",
                str(self.site.state),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def deliver(
        self, event: str, payload: dict[str, Any], delivery: str | None = None
    ) -> tuple[int, str, str]:
        body = json.dumps(payload).encode()
        delivery = delivery or str(uuid.uuid4())
        host, port = self.webhook.split("//")[1].split("/")[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(
                "POST",
                "/github",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "X-GitHub-Event": event,
                    "X-GitHub-Delivery": delivery,
                    "X-Hub-Signature-256": sign(self.secret, body),
                    "User-Agent": "GitHub-Hookshot/test",
                },
            )
            response = conn.getresponse()
            return response.status, response.read().decode().strip(), delivery
        finally:
            conn.close()

    def page(self, env: str) -> tuple[int, Any]:
        """GET / of an environment through the router, by its host name."""
        return page("127.0.0.1", self.router_port, f"{env}.{DOMAIN}")

    def serving(self, env: str, version: str | None = None) -> dict[str, Any] | None:
        """The page of `env` once it answers 200 (running `version`, when given)."""
        status, page = self.page(env)
        if status != 200 or not isinstance(page, dict):
            return None
        return page if version is None or page.get("version") == version else None

    def post(self, env: str, message: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.router_port, timeout=10)
        try:
            body = f"message={message}"
            conn.request(
                "POST",
                "/",
                body=body,
                headers={
                    "Host": f"{env}.{DOMAIN}",
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
            return conn.getresponse().status
        finally:
            conn.close()

    def root(self) -> pymysql.connections.Connection:
        return self.connect("root", self.site.secret("root_password"))

    def connect(self, user: str, password: str) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.site.rw_port,
            user=user,
            password=password,
            autocommit=True,
            connect_timeout=5,
        )

    def branch_rows(self, env: str) -> list[str]:
        """The guestbook's rows in a preview's own database container (root over its socket)."""
        box = docker.from_env().containers.get(f"cidemo-{self.site.name}-db-{env}")
        result = box.exec_run(
            ["mariadb", "-N", "-B", "-e", "SELECT message FROM stage_guestbook.entries ORDER BY id"]
        )
        assert result.exit_code == 0, result.output
        return result.output.decode().splitlines()

    def rows(self, database: str) -> list[str]:
        conn = self.root()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT message FROM `{database}`.entries ORDER BY id")
                return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()

    def exists(self, sql: str, *args: Any) -> bool:
        conn = self.root()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchone() is not None
        finally:
            conn.close()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll `probe` every second until it returns something; fail naming `what` and the last."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception as exc:  # a probe racing a deployment may fail on the way
            got, last = None, f"{type(exc).__name__}: {exc}"
        if got is not None:
            return got
        time.sleep(1.0)
    pytest.fail(f"{what} not within {timeout:.0f} s (last: {last})")


def payload(name: str, **changes: Any) -> dict[str, Any]:
    data = json.loads((GITHUB / f"{name}.json").read_text())
    data = copy.deepcopy(data)
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return data


def pull_request(action: str, number: int, sha: str) -> dict[str, Any]:
    return payload(
        f"pull_request.{action}",
        number=number,
        pull_request__number=number,
        pull_request__head__sha=sha,
    )


def service(engine: docker.DockerClient, site: TestSite, env: str) -> dict[str, Any] | None:
    try:
        return dict(engine.api.inspect_service(f"cidemo-{site.name}-app-{env}"))
    except docker.errors.NotFound:
        return None


def service_image(engine: docker.DockerClient, site: TestSite, env: str) -> str | None:
    found = service(engine, site, env)
    return None if found is None else found["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]


def running_image_id(engine: docker.DockerClient, site: TestSite, env: str) -> str:
    flt = {"label": f"com.docker.swarm.service.name=cidemo-{site.name}-app-{env}"}
    ids = {c.image.id for c in engine.containers.list(filters=flt)}
    assert len(ids) == 1, ids
    return ids.pop()


@pytest.fixture(scope="module")
def site(
    engine: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
    app_images: dict[str, str],
) -> Iterator[TestSite]:
    """The site; its services go before the images they run are untagged."""
    made = make_site(
        engine,
        tmp_path_factory.mktemp("envs"),
        domain=DOMAIN,
        environments={
            "app": APP,
            "app_port": 8080,
            "image": "cidemo/guestbook:{sha}",
            "router_port": free_port(),
            "max_previews": 2,
            "preview_ttl_hours": 24,
            "repository": "paulczar/ci-demo",  # the fixtures' repository
        },
    )
    try:
        yield made
    finally:
        remove_site_apps(engine, made.name)
        remove_site([engine], made.name)


@pytest.fixture(scope="module")
def app_images(engine: docker.DockerClient) -> Iterator[dict[str, str]]:
    made: dict[str, str] = {}
    try:
        for sha in (SHA_A, SHA_B):
            tag = f"cidemo/guestbook:{sha}"
            images.build_app_image(
                engine,
                GUESTBOOK,
                tag,
                Reporter(quiet=True),
                build_args={"APP_VERSION": sha},
                labels={"io.cidemo.test": "environments", "org.example.commit": sha},
            )
            made[sha] = tag
        yield made
    finally:
        for tag in made.values():
            with contextlib.suppress(docker.errors.APIError):
                engine.images.remove(tag)


@pytest.fixture(scope="module")
def envs(site: TestSite) -> Iterator[Env]:
    result = provision_converged(site)
    assert result.rc == 0, result.err + result.out
    with webhook_server(site, {}, workers=3) as served:
        yield served


@contextlib.contextmanager
def webhook_server(site: TestSite, extra_env: dict[str, str], workers: int) -> Iterator[Env]:
    """`cidemo webhook serve` of the site on a free loopback port, with a fresh webhook secret and
    a recording GitHub stand-in (the fixtures' maintainer `paulczar` may label fork PRs); stopped
    with SIGTERM (then killed) on exit. Its log: `<state>/webhook.log`."""
    secret = secrets.token_urlsafe(24)
    path = site.state / "secrets" / "webhook_secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    port = free_port()
    log = (site.state / "webhook.log").open("w")
    github = RecordingGitHub().__enter__()
    github.permissions["paulczar"] = "admin"  # the fixtures' maintainer, who labels fork PRs
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIDEMO_GITHUB")}
    env |= {"CIDEMO_GITHUB_API": github.url, "CIDEMO_GITHUB_TOKEN": GITHUB_TOKEN, "NO_COLOR": "1"}
    env |= extra_env
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cidemo_infra",
            "webhook",
            "serve",
            "--site",
            str(site.path),
            "--state-dir",
            str(site.state),
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    try:
        wait_for("the webhook server to listen", lambda: _listens(port) or None, 30)
        yield Env(
            site,
            f"http://127.0.0.1:{port}/github",
            secret,
            int(site.data["environments"]["router_port"]),
            github,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
        github.__exit__()


def _listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


STAGE_ROWS = ["seeded in staging 1", "seeded in staging 2"]
APP_SECRET = "S3_ACCESS_KEY"


def test_staging_database_and_an_app_secret_are_in_place(envs: Env) -> None:
    folder = envs.site.state / "secrets" / "app"
    folder.mkdir(mode=0o700)
    (folder / APP_SECRET).write_text(secrets.token_urlsafe(24) + "\n")
    (folder / APP_SECRET).chmod(0o600)
    conn = envs.root()
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE stage_guestbook CHARACTER SET utf8mb4")
        cur.execute(
            "CREATE TABLE stage_guestbook.entries (id INT AUTO_INCREMENT PRIMARY KEY, "
            "message VARCHAR(500) NOT NULL, "
            "created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        cur.executemany(
            "INSERT INTO stage_guestbook.entries (message) VALUES (%s)", [(r,) for r in STAGE_ROWS]
        )
    conn.close()
    assert envs.rows("stage_guestbook") == STAGE_ROWS


def test_opened_pull_request_gets_a_preview_on_its_own_database(
    engine: docker.DockerClient, envs: Env
) -> None:
    env = f"pr-{PR_ONE}-{APP}"
    opened = pull_request("opened", PR_ONE, SHA_A)
    status, text, delivery = envs.deliver("pull_request", opened)
    assert status == 202, text
    envs.sent["opened"] = (opened, delivery)
    page = wait_for(
        f"{env} answering through the router",
        lambda: envs.serving(env),
    )
    assert page["version"] == SHA_A
    assert page["database"] == "stage_guestbook"  # staging's, in the preview's own branch
    assert [e["message"] for e in page["entries"]] == STAGE_ROWS
    assert envs.post(env, "written in the preview") == 303
    assert envs.branch_rows(env) == [*STAGE_ROWS, "written in the preview"]
    assert envs.rows("stage_guestbook") == STAGE_ROWS
    assert envs.page(f"pr-999-{APP}")[0] == 404

    spec = service(engine, envs.site, env)
    assert spec is not None
    labels = spec["Spec"]["Labels"]
    assert labels["io.cidemo.site"] == envs.site.name
    assert labels["io.cidemo.role"] == "app"
    assert labels["io.cidemo.env"] == env
    container = spec["Spec"]["TaskTemplate"]["ContainerSpec"]
    settings = dict(e.split("=", 1) for e in container["Env"])
    assert settings["DB_HOST"] == f"cidemo-{envs.site.name}-db-{env}"
    assert settings["DB_PASS_FILE"] == "/run/secrets/db_pass"
    assert settings["NODE_ENV"] == "production"
    assert "DB_PASS" not in settings
    assert settings["S3_ACCESS_KEY_FILE"] == "/run/secrets/s3_access_key"
    assert sorted(s["File"]["Name"] for s in container["Secrets"]) == ["db_pass", "s3_access_key"]
    update = spec["Spec"]["UpdateConfig"]
    assert (update["Order"], update["FailureAction"]) == ("start-first", "rollback")
    registry = envs.site.registry()
    assert registry.get(f"/services/apps/{env}") == f"cidemo-{envs.site.name}-app-{env}:8080"

    # the commit status with the preview's URL, through CIDEMO_GITHUB_API, with the token
    url = f"http://{env}.{DOMAIN}:{envs.router_port}/"
    posted = wait_for(
        "a success status for the head commit",
        lambda: [
            r
            for r in envs.github.statuses()
            if r.path == f"/repos/paulczar/ci-demo/statuses/{SHA_A}"
            and r.body.get("state") == "success"
        ],
        30,
    )
    assert posted[-1].body["target_url"] == url
    assert posted[-1].headers["Authorization"] == f"Bearer {GITHUB_TOKEN}"


def test_synchronize_runs_the_new_commit_on_the_same_database(
    engine: docker.DockerClient, envs: Env
) -> None:
    env = f"pr-{PR_ONE}-{APP}"
    status, text, _ = envs.deliver("pull_request", pull_request("synchronize", PR_ONE, SHA_B))
    assert status == 202, text
    page = wait_for(
        f"{env} serving {SHA_B[:12]}",
        lambda: envs.serving(env, SHA_B),
    )
    assert [e["message"] for e in page["entries"]] == [*STAGE_ROWS, "written in the preview"]
    assert service_image(engine, envs.site, env) == f"cidemo/guestbook:{SHA_B}"


def public_secret_name(site: str, env: str, key: str, value: str) -> str:
    """Swarm secret names before: an HMAC keyed with what the secret's labels show."""
    digest = hmac.new(f"{site}/{env}/{key}".encode(), value.encode(), hashlib.sha256)
    return f"cidemo-{site}-{digest.hexdigest()[:20]}"


def secret_names(engine: docker.DockerClient, site: TestSite, env: str) -> dict[str, str]:
    flt = {"label": [f"io.cidemo.site={site.name}", f"io.cidemo.env={env}"]}
    return {
        s["Spec"]["Name"]: s["Spec"]["Labels"]["io.cidemo.secret"]
        for s in engine.api.secrets(filters=flt)
    }


def test_secret_names_reveal_nothing_and_can_change_under_a_running_preview(
    engine: docker.DockerClient, envs: Env
) -> None:
    env = f"pr-{PR_ONE}-{APP}"
    values = {
        "DB_PASS": envs.site.secret(f"app-db-{env}"),
        APP_SECRET: envs.site.secret(f"app/{APP_SECRET}"),
    }
    before = secret_names(engine, envs.site, env)
    assert sorted(before.values()) == sorted(values)
    # `docker secret ls` and the labels give site, env and key: a right guess used to match
    for name, key in before.items():
        assert name != public_secret_name(envs.site.name, env, key, values[key])

    # names made under another key (or an earlier version's scheme) roll the running preview
    # onto new secrets on the next up, and the old ones go
    (envs.site.state / "secrets" / "swarm_secret_names").unlink()
    for _ in range(3):  # a secret a stopping task still holds goes with a later up
        # --lock-wait: the webhook's worker may still hold the lock of the synchronize
        result = envs.cli("up", "--pr", str(PR_ONE), "--ref", SHA_B, "--lock-wait", "300")
        assert result.rc == 0, result.err
        if not set(before) & set(secret_names(engine, envs.site, env)):
            break
    after = secret_names(engine, envs.site, env)
    assert sorted(after.values()) == sorted(values) and not set(after) & set(before)
    spec = service(engine, envs.site, env)
    assert spec is not None
    mounted = spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert {m["SecretName"] for m in mounted} == set(after)
    page = wait_for(f"{env} serving with its new secrets", lambda: envs.serving(env, SHA_B))
    assert [e["message"] for e in page["entries"]] == [*STAGE_ROWS, "written in the preview"]


def test_a_replayed_delivery_does_nothing(engine: docker.DockerClient, envs: Env) -> None:
    env = f"pr-{PR_ONE}-{APP}"
    body, delivery = envs.sent["opened"]
    status, text, _ = envs.deliver("pull_request", body, delivery)
    assert (status, text) == (200, "duplicate delivery")
    time.sleep(10)  # what a replay queued would have started by now: back to the opened commit
    assert service_image(engine, envs.site, env) == f"cidemo/guestbook:{SHA_B}"
    assert envs.page(env)[1]["version"] == SHA_B


def test_a_forks_preview_gets_only_its_database_credentials(
    engine: docker.DockerClient, envs: Env
) -> None:
    env = f"pr-{PR_TWO}-{APP}"
    labeled = payload(
        "pull_request.labeled-fork",
        number=PR_TWO,
        pull_request__number=PR_TWO,
        pull_request__head__sha=SHA_A,
    )
    status, text, _ = envs.deliver("pull_request", labeled)
    assert status == 202 and "(fork)" in text, text
    page = wait_for(f"{env} answering", lambda: envs.serving(env))
    assert page["entries"] == []  # fork_data: schema (the default): staging's table, no rows
    spec = service(engine, envs.site, env)
    assert spec is not None
    container = spec["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert [s["File"]["Name"] for s in container["Secrets"]] == ["db_pass"]
    assert not any(e.startswith("S3_ACCESS_KEY") for e in container["Env"])


def test_two_previews_cannot_read_each_others_database(envs: Env) -> None:

    one = envs.site.secret(f"app-db-pr-{PR_ONE}-{APP}")
    two = envs.site.secret(f"app-db-pr-{PR_TWO}-{APP}")
    assert one != two
    # a preview's user has no account on the cluster that serves production
    for user, password in ((f"pr_{PR_ONE}", one), (f"pr_{PR_TWO}", two)):
        with pytest.raises(pymysql.err.OperationalError) as denied:
            envs.connect(user, password)
        assert denied.value.args[0] == 1045, denied.value
    box = docker.from_env().containers.get(f"cidemo-{envs.site.name}-db-pr-{PR_ONE}-{APP}")

    def as_user(user: str, password: str, statement: str) -> Any:
        return box.exec_run(
            ["mariadb", "-h", "127.0.0.1", "-u", user, "-N", "-B", "-e", statement],
            environment={"MYSQL_PWD": password},
        )

    counted = as_user(f"pr_{PR_ONE}", one, "SELECT COUNT(*) FROM stage_guestbook.entries")
    assert counted.output.strip() == b"3", counted.output
    shown = as_user(f"pr_{PR_ONE}", one, "SHOW DATABASES").output.split()
    assert set(shown) == {b"information_schema", b"stage_guestbook"}
    assert as_user(f"pr_{PR_TWO}", two, "SELECT 1").exit_code != 0  # not its branch


def test_env_up_past_max_previews_fails_with_one_line(
    engine: docker.DockerClient, envs: Env
) -> None:
    result = envs.cli("up", "--pr", "99", "--ref", SHA_A, "--image", f"cidemo/guestbook:{SHA_A}")
    assert result.rc == 1, result.err
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "environments.max_previews: 2 previews exist" in lines[0]
    assert f"pr-{PR_ONE}-{APP}" in lines[0] and f"pr-99-{APP}" in lines[0]
    assert service(engine, envs.site, f"pr-99-{APP}") is None
    assert not envs.exists("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='pr_99'")


def test_env_list_shows_the_previews(envs: Env) -> None:
    result = envs.cli("list", "--json")
    assert result.rc == 0, result.err
    rows = {r["name"]: r for r in json.loads(result.out)}
    one = rows[f"pr-{PR_ONE}-{APP}"]
    assert one["kind"] == "preview"
    assert one["image"] == f"cidemo/guestbook:{SHA_B}"
    assert one["database"] == "stage_guestbook"
    assert one["snapshot"].startswith(f"cidemo-snapshot/{envs.site.name}-stage-{APP}:full-")
    assert one["url"] == f"http://pr-{PR_ONE}-{APP}.{DOMAIN}:{envs.router_port}/"
    assert one["updated"]


def test_closed_pull_request_removes_app_database_and_user(
    engine: docker.DockerClient, envs: Env
) -> None:
    env = f"pr-{PR_ONE}-{APP}"
    closed = payload(
        "pull_request.closed-merged",
        number=PR_ONE,
        pull_request__number=PR_ONE,
        pull_request__head__sha=SHA_B,
    )
    status, text, _ = envs.deliver("pull_request", closed)
    assert status == 202, text
    wait_for(f"{env}'s service removed", lambda: service(engine, envs.site, env) is None or None)
    wait_for(
        f"database pr_{PR_ONE} dropped",
        lambda: (
            not envs.exists(
                "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", f"pr_{PR_ONE}"
            )
            or None
        ),
    )
    assert not envs.exists("SELECT 1 FROM mysql.user WHERE User = %s", f"pr_{PR_ONE}")
    branch = {"label": [f"io.cidemo.apps-of={envs.site.name}", f"io.cidemo.env={env}"]}
    wait_for(
        f"{env}'s database container removed",
        lambda: not engine.api.containers(all=True, filters=branch) or None,
        30,
    )
    wait_for(f"{env} unrouted", lambda: envs.page(env)[0] == 404 or None, 30)
    flt = {"label": [f"io.cidemo.site={envs.site.name}", f"io.cidemo.env={env}"]}
    wait_for(f"{env}'s secrets removed", lambda: not engine.api.secrets(filters=flt) or None, 60)
    assert not (envs.site.state / "secrets" / f"app-db-{env}").exists()


def test_push_to_development_updates_staging(engine: docker.DockerClient, envs: Env) -> None:
    env = f"stage-{APP}"
    status, text, _ = envs.deliver("push", payload("push.development", after=SHA_B))
    assert status == 202, text
    page = wait_for(
        f"{env} serving {SHA_B[:12]}",
        lambda: envs.serving(env, SHA_B),
    )
    assert page["database"] == "stage_guestbook"
    assert [e["message"] for e in page["entries"]] == STAGE_ROWS


def test_push_to_master_runs_stagings_image_in_production(
    engine: docker.DockerClient, envs: Env
) -> None:
    status, text, _ = envs.deliver("push", payload("push.master", after=SHA_B))
    assert status == 202, text
    page = wait_for(
        "production answering",
        lambda: envs.serving(APP),
    )
    assert page["version"] == SHA_B
    assert page["database"] == APP
    staging = service_image(engine, envs.site, f"stage-{APP}")
    assert service_image(engine, envs.site, APP) == staging
    assert running_image_id(engine, envs.site, APP) == running_image_id(
        engine, envs.site, f"stage-{APP}"
    )


def test_production_takes_stagings_exact_image_not_the_template(
    engine: docker.DockerClient, envs: Env
) -> None:
    # staging runs commit C from the image built for A (say, a retagged release candidate):
    # the template's image for C does not exist, staging's does. The release merges the staging
    # branch into master: master's new commit M is a merge commit nobody built an image for, and
    # the push lists C among its commits.
    result = envs.cli("up", "--staging", "--ref", SHA_C, "--image", f"cidemo/guestbook:{SHA_A}")
    assert result.rc == 0, result.err
    merge = secrets.token_hex(20)
    push = payload("push.master", after=merge)
    push["commits"] = [{**push["commits"][0], "id": SHA_C}, {**push["commits"][1], "id": merge}]
    status, text, _ = envs.deliver("push", push)
    assert status == 202, text
    wait_for(
        "production on staging's image",
        lambda: service_image(engine, envs.site, APP) == f"cidemo/guestbook:{SHA_A}" or None,
    )
    wait_for(
        "production serving it",
        lambda: envs.serving(APP, SHA_A),
    )


def test_promote_moves_stagings_image(engine: docker.DockerClient, envs: Env) -> None:
    assert envs.cli("up", "--staging", "--ref", SHA_B).rc == 0
    result = envs.cli("promote")
    assert result.rc == 0, result.err
    assert f"cidemo/guestbook:{SHA_B}" in result.out
    assert service_image(engine, envs.site, APP) == f"cidemo/guestbook:{SHA_B}"
    again = envs.cli("promote")
    assert again.rc == 0, again.err


class StatusWatch(threading.Thread):
    """GETs an environment's host through the router every 0.1 s (bounded) until stopped,
    keeping each answer's status and Retry-After header."""

    def __init__(self, port: int, host: str) -> None:
        super().__init__(daemon=True)
        self.port, self.host = port, host
        self.seen: list[tuple[int, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/", headers={"Host": self.host})
                response = conn.getresponse()
                response.read()
                self.seen.append((response.status, response.getheader("Retry-After")))
            except OSError:
                self.seen.append((0, None))
            finally:
                conn.close()
            time.sleep(0.1)

    def __enter__(self) -> StatusWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


def test_refresh_staging_restores_production_into_staging(envs: Env) -> None:
    assert envs.post(APP, "written in production") == 303
    production = envs.rows(APP)
    assert production == ["written in production"]
    with StatusWatch(envs.router_port, f"stage-{APP}.{DOMAIN}") as watch:
        result = envs.cli("refresh-staging", "--yes")
    assert result.rc == 0, result.err
    # staging was held in maintenance during the restore, and the router said when to retry
    assert (503, "30") in watch.seen, watch.seen
    assert "stage_guestbook now holds guestbook" in result.out
    assert envs.rows("stage_guestbook") == production
    backups = list((envs.site.state / "backups").iterdir())
    assert len(backups) == 1 and backups[0].name.startswith("guestbook-")
    page = wait_for(
        "staging showing production's rows",
        lambda: envs.serving(f"stage-{APP}"),
        30,
    )
    assert [e["message"] for e in page["entries"]] == production
    assert (envs.site.state / "secrets" / "backup_key").stat().st_mode & 0o777 == 0o600


def one_error_line(result: Run) -> str:
    lines = [line for line in result.err.splitlines() if line.startswith("cidemo:")]
    assert len(lines) == 1, result.err
    return lines[0]


def test_refresh_staging_refuses_a_tampered_or_unauthenticated_backup(envs: Env) -> None:
    """Through the command: the stored backup with a row and its checksum changed fails its
    authentication; a format-1 backup restores only with --allow-unauthenticated."""
    (stored,) = (envs.site.state / "backups").iterdir()
    manifest_file = stored / "manifest.json"
    original = manifest_file.read_bytes()
    staged = envs.rows("stage_guestbook")
    manifest = json.loads(original)
    manifest["tables"][0]["checksum"] = "0" * 64  # what a changed row would need
    manifest_file.write_text(json.dumps(manifest))
    tampered = envs.cli("refresh-staging", "--yes", "--from", stored.name)
    assert tampered.rc == 1
    assert "manifest.json: authentication failed" in one_error_line(tampered)
    assert envs.rows("stage_guestbook") == staged

    legacy = json.loads(original)
    legacy["format"] = 1
    for key in ("key_id", "hmac_sha256"):
        del legacy[key]
    for table in legacy["tables"]:
        table.pop("bytes")
    manifest_file.write_text(json.dumps(legacy))
    refused = envs.cli("refresh-staging", "--yes", "--from", stored.name)
    assert refused.rc == 1
    assert "format 1, made before backups were authenticated" in one_error_line(refused)
    alone = envs.cli("refresh-staging", "--yes", "--allow-unauthenticated")
    assert alone.rc == 2 and "only with --from NAME" in one_error_line(alone)
    allowed = envs.cli("refresh-staging", "--yes", "--from", stored.name, "--allow-unauthenticated")
    assert allowed.rc == 0, allowed.err
    assert envs.rows("stage_guestbook") == staged
    manifest_file.write_bytes(original)


def test_a_failed_restore_still_ends_staging_maintenance(envs: Env) -> None:
    before = envs.rows("stage_guestbook")
    backups = envs.site.state / "backups"
    good = sorted(p for p in backups.iterdir() if p.is_dir())[-1]
    broken = backups / (good.name[: -len("T000000Z")] + "T000001Z")
    shutil.copytree(good, broken)
    for table in broken.glob("*.jsonl.gz"):
        table.write_bytes(b"not what the manifest says")
    with StatusWatch(envs.router_port, f"stage-{APP}.{DOMAIN}") as watch:
        result = envs.cli("refresh-staging", "--yes", "--from", broken.name)
    assert result.rc == 1, result.out + result.err
    assert (503, "30") in watch.seen, watch.seen  # the restore ran in maintenance, and failed
    assert envs.rows("stage_guestbook") == before
    wait_for("staging serving again", lambda: envs.serving(f"stage-{APP}"), 30)


def object_storage_cloud() -> str:
    """The test cloud (OS_CLOUD) whose object storage holds backups: a failure in CI, a skip on
    a developer's machine without it."""
    cloud = os.environ.get("OS_CLOUD")
    if cloud:
        return cloud
    how = "boot tests/cloud/openstack/openstack-up and set OS_CLIENT_CONFIG_FILE and OS_CLOUD"
    if os.environ.get("CI"):
        pytest.fail(f"required service missing in CI: OS_CLOUD is not set; {how}")
    pytest.skip(f"OS_CLOUD is not set; {how}")


@pytest.fixture
def swift_site(envs: Env, tmp_path: Path) -> Iterator[tuple[Path, Any, str]]:
    """The same site with its backups in a fresh container of the test cloud's object storage
    (keeping 1): its site file, an openstacksdk connection, the container; the container goes
    afterwards."""
    import openstack

    cloud = object_storage_cloud()
    container = f"cidemo-test-{secrets.token_hex(4)}"
    data = copy.deepcopy(envs.site.data)
    data["cloud"] = cloud
    data["environments"].update(backup_container=container, backup_keep=1)
    path = tmp_path / "site-swift.yaml"
    path.write_text(yaml.safe_dump(data))
    conn = openstack.connect(cloud=cloud)
    try:
        yield path, conn, container
    finally:
        with contextlib.suppress(Exception):
            for obj in list(conn.object_store.objects(container)):
                conn.object_store.delete_object(obj.name, container=container)
            conn.object_store.delete_container(container)
        conn.close()


def test_refresh_staging_through_object_storage(
    envs: Env, swift_site: tuple[Path, Any, str]
) -> None:
    site_file, conn, container = swift_site
    local = sorted(p.name for p in (envs.site.state / "backups").iterdir())
    assert envs.post(APP, "written before the swift backup") == 303
    production = envs.rows(APP)

    first = envs.cli("refresh-staging", "--yes", site=site_file)
    assert first.rc == 0, first.err
    assert envs.rows("stage_guestbook") == production
    objects = sorted(o.name for o in conn.object_store.objects(container))
    prefix = f"{envs.site.name}/"
    names = {o[len(prefix) :].split("/")[0] for o in objects}
    assert len(names) == 1 and all(o.startswith(prefix) for o in objects), objects
    name = names.pop()
    assert f"{prefix}{name}/manifest.json" in objects
    assert f"{prefix}{name}/entries.jsonl.gz" in objects
    assert f"backup: swift://{container}/{prefix}{name}" in first.out
    # the local copy was scratch only: nothing new stays in the backup directory
    assert sorted(p.name for p in (envs.site.state / "backups").iterdir()) == local

    time.sleep(1.1)  # backup names have a one-second resolution
    assert envs.post(APP, "written before the second swift backup") == 303
    second = envs.cli("refresh-staging", "--yes", site=site_file)
    assert second.rc == 0, second.err
    assert f"removed older backups: {name}" in second.out  # backup_keep: 1
    listed = envs.cli("backups", "--json", site=site_file)
    assert listed.rc == 0, listed.err
    newest = [b["name"] for b in json.loads(listed.out)]
    assert len(newest) == 1 and newest[0] != name
    assert not any(
        o.name.startswith(f"{prefix}{name}/") for o in conn.object_store.objects(container)
    )
    refreshed = envs.rows("stage_guestbook")
    assert refreshed == envs.rows(APP)

    # a stored backup damaged in the container is refused on the way back; staging stays
    key = f"{prefix}{newest[0]}/entries.jsonl.gz"
    body = conn.object_store.download_object(key, container=container)
    damaged = body[:-12] + bytes(b ^ 0x55 for b in body[-12:])
    conn.object_store.create_object(container, key, data=damaged)
    bad = envs.cli("refresh-staging", "--yes", "--from", newest[0], site=site_file)
    assert bad.rc == 1, bad.out + bad.err
    lines = [ln for ln in bad.err.splitlines() if ln.startswith("cidemo:")]
    assert len(lines) == 1 and "entries.jsonl.gz" in lines[0], bad.err
    assert envs.rows("stage_guestbook") == refreshed
    leftovers = [p for p in (envs.site.state / "backups").iterdir() if p.name not in local]
    assert leftovers == [], leftovers

    missing = envs.cli(
        "refresh-staging", "--yes", "--from", "guestbook-20000101T000000Z", site=site_file
    )
    # a backup that is not in the store is refused before anything is locked or fetched
    assert missing.rc == 2 and "no such complete backup" in missing.err, missing.err
    assert envs.rows("stage_guestbook") == refreshed


def test_gc_removes_a_preview_marked_closed(engine: docker.DockerClient, envs: Env) -> None:
    env = f"pr-{PR_TWO}-{APP}"
    dry = envs.cli("gc", "--dry-run")
    assert dry.rc == 0 and "no changes" in dry.out, dry.out + dry.err
    records.mark_closed(StateDir(envs.site.state, envs.site.name), PR_TWO)
    dry = envs.cli("gc", "--dry-run")
    assert f"would remove {env}: pull request #{PR_TWO} is closed" in dry.out
    assert service(engine, envs.site, env) is not None
    result = envs.cli("gc", "--yes")
    assert result.rc == 0, result.err
    assert service(engine, envs.site, env) is None
    assert not envs.exists(
        "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", f"pr_{PR_TWO}"
    )
    assert "no changes" in envs.cli("gc", "--yes").out


def test_the_site_stays_converged_with_environments_running(envs: Env) -> None:
    plan = envs.site.cidemo("plan", "--json")
    assert plan.rc == 0, plan.out + plan.err
    assert json.loads(plan.out)["actions"] == []


def test_no_database_password_in_specs_labels_env_or_logs(
    engine: docker.DockerClient, envs: Env
) -> None:
    values = [envs.site.secret(f"app-db-{e}") for e in (f"stage-{APP}", APP)]
    values.append(envs.site.secret(f"app/{APP_SECRET}"))
    values.append(GITHUB_TOKEN)  # the webhook server had it in its environment
    texts = [envs.cli("list", "--json").out, (envs.site.state / "webhook.log").read_text()]
    for name in (f"stage-{APP}", APP):
        texts.append(json.dumps(service(engine, envs.site, name)))
    flt = {"label": f"io.cidemo.apps-of={envs.site.name}"}
    for container in engine.containers.list(all=True, filters=flt):
        texts.append(json.dumps(container.attrs["Config"]))
        texts.append(container.logs().decode(errors="replace"))
    router = engine.containers.get(f"cidemo-{envs.site.name}-router")
    texts.append(router.logs().decode(errors="replace"))
    for value in values:
        assert len(value) >= 16
        assert not any(value in t for t in texts)
