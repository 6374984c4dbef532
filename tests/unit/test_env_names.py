"""Environments without services: names, image templating, locks, the preview limit, the pure
parts of the swarm platform and the router's placement, and the Deis platform over the Deis v1
fixtures (tests/data/deis, NOT a Deis controller)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import multiprocessing
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cidemo_infra.console import Reporter
from cidemo_infra.envs import names, records
from cidemo_infra.envs.locks import env_lock, previews_lock
from cidemo_infra.envs.names import CapacityError, Environment
from cidemo_infra.errors import EXIT_FAILED, EXIT_USAGE, LockError, SiteError, UsageError
from cidemo_infra.pipeline.operations import EnvContext, app_settings, database_of, gc
from cidemo_infra.placement.specs import desired_specs, image_refs
from cidemo_infra.platforms import PLATFORMS, platform_for
from cidemo_infra.platforms.deis import DeisClient
from cidemo_infra.platforms.deis_platform import DeisPlatform
from cidemo_infra.platforms.platform import Deployment
from cidemo_infra.platforms.swarm import SecretMount, route_key, secret_name, service_spec
from cidemo_infra.site import parse_site
from cidemo_infra.state import StateDir
from cidemo_infra.targets.local import local_inventory
from tests.unit.test_deis_client import TOKEN, DeisV1FixtureServer

pytestmark = pytest.mark.unit

IMAGES = {
    "etcd": "cidemo/etcd:t",
    "galera": "cidemo/galera:t",
    "dbproxy": "cidemo/dbproxy:t",
    "jenkins": "cidemo/jenkins-standin:t",
    "router": "cidemo/router:t",
}
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


def site_of(**environments: object):
    data: dict[str, object] = {"name": "unit"}
    if environments:
        data["environments"] = environments
    return parse_site(yaml.safe_dump(data), "unit.yaml")


@pytest.mark.parametrize(
    ("make", "name", "kind"),
    [
        (lambda: names.preview(11, "ghost"), "pr-11-ghost", "preview"),
        (lambda: names.staging("ghost"), "stage-ghost", "staging"),
        (lambda: names.production("ghost"), "ghost", "production"),
    ],
)
def test_names_follow_deis(make, name: str, kind: str) -> None:
    env = make()
    assert (env.name, env.kind) == (name, kind)
    assert names.parse(name, "ghost") == env


def test_parse_refuses_another_apps_or_bad_names() -> None:
    for bad in ("pr-0-ghost", "pr-01-ghost", "stage-blog", "blog", "pr-1-blog"):
        with pytest.raises(UsageError, match="valid are pr-<n>-ghost"):
            names.parse(bad, "ghost")
    with pytest.raises(UsageError, match="a-z, 0-9 and -"):
        names.parse("PR_1", "ghost")
    with pytest.raises(UsageError, match=">= 1"):
        names.preview(0, "ghost")


def test_databases_of_environments() -> None:
    assert database_of(names.preview(7, "guestbook")) == "pr_7"
    assert database_of(names.staging("guestbook")) == "stage_guestbook"
    assert database_of(names.production("guestbook")) == "guestbook"


@pytest.mark.parametrize(
    ("app", "clash"),
    [
        ("pr-5", "named like an environment"),  # production's database would be PR 5's pr_5
        ("pr-12-blog", "named like an environment"),  # production: PR 12 of app blog
        ("stage-blog", "named like an environment"),  # production: staging of app blog
        ("mysql", "one of MariaDB's own"),
        ("information-schema", "one of MariaDB's own"),
        ("performance-schema", "one of MariaDB's own"),
        ("sys", "one of MariaDB's own"),
    ],
)
def test_an_app_named_like_an_environment_or_system_database_is_refused(
    app: str, clash: str, tmp_path: Path, cidemo
) -> None:
    with pytest.raises(SiteError) as caught:
        site_of(app=app)
    assert f"unit.yaml: environments.app: '{app}' " in str(caught.value)
    assert clash in str(caught.value) and caught.value.exit_code == EXIT_USAGE
    if app == "pr-5":  # through the CLI: one line, exit 2, nothing written
        path = tmp_path / "site.yaml"
        path.write_text(f"name: unit\nenvironments:\n  app: {app}\n")
        result = cidemo("env", "list", "--site", str(path), "--state-dir", str(tmp_path / "st"))
        lines = [line for line in result.err.splitlines() if line.strip()]
        assert result.rc == EXIT_USAGE and len(lines) == 1, result.err
        assert "environments.app: 'pr-5' is named like an environment" in lines[0]
        assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("app", ["ghost", "pr", "stage", "prod-5", "pr5", "mysql-blog", "sys2"])
def test_apps_that_collide_with_nothing_are_accepted(app: str) -> None:
    assert site_of(app=app).environments.app == app


def test_image_template_replaces_app_and_sha() -> None:
    assert names.image_for("{app}:{sha}", "ghost", SHA) == f"ghost:{SHA}"
    assert (
        names.image_for("registry.example.com:5000/{app}:{sha}", "ghost", SHA[:12])
        == f"registry.example.com:5000/ghost:{SHA[:12]}"
    )
    assert names.image_for("cidemo/guestbook:v1", "guestbook", SHA) == "cidemo/guestbook:v1"


def test_image_template_errors_name_the_key() -> None:
    with pytest.raises(UsageError, match=r"environments.image .*unknown placeholder \{branch\}"):
        names.image_for("{app}:{branch}", "ghost", SHA)
    with pytest.raises(UsageError, match="--ref"):
        names.image_for("{app}:{sha}", "ghost", "feature/x;rm")
    with pytest.raises(UsageError, match="not an image reference"):
        names.image_for("{app} {sha}", "ghost", SHA)


def test_max_previews_counts_others_and_lets_existing_update() -> None:
    names.check_capacity({"pr-1-g"}, "pr-2-g", 2)
    names.check_capacity({"pr-1-g", "pr-2-g"}, "pr-2-g", 2)
    with pytest.raises(CapacityError) as caught:
        names.check_capacity({"pr-1-g", "pr-2-g"}, "pr-3-g", 2)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("environments.max_previews: 2 previews exist (pr-1-g, pr-2-g)")
    assert caught.value.exit_code == EXIT_FAILED


def _hold(path: str, site: str, name: str, ready: object, release: object) -> None:
    state = StateDir(Path(path), site)
    with env_lock(state, name):
        ready.set()  # type: ignore[attr-defined]
        release.wait(10)  # type: ignore[attr-defined]


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state", "unit").ensure()


def test_env_lock_excludes_another_process_and_names_the_environment(state: StateDir) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(state.path), "unit", "pr-1-g", ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        started = time.monotonic()
        with pytest.raises(LockError) as caught, env_lock(state, "pr-1-g", wait=0.5):
            pass
        assert time.monotonic() - started >= 0.5
        assert "environment 'pr-1-g' of site 'unit' is locked" in str(caught.value)
        with env_lock(state, "pr-2-g"):  # other environments are free
            pass
    finally:
        release.set()
        holder.join(10)
    with env_lock(state, "pr-1-g"):
        pass


def test_env_lock_excludes_threads_of_one_process(state: StateDir) -> None:
    with env_lock(state, "stage-g"), pytest.raises(LockError):  # noqa: SIM117
        with env_lock(state, "stage-g", wait=0.2):
            pass
    with previews_lock(state):
        pass


def test_records_round_trip_and_closed_markers(state: StateDir) -> None:
    record = records.EnvRecord("pr-3-g", "preview", 3, "pr_3", "2015-12-01T10:00:00+00:00", "x")
    records.save(state, record.touched(image="g:1", ref="abc"))
    loaded = records.load(state, "pr-3-g")
    assert loaded is not None and loaded.image == "g:1" and loaded.environment.pr == 3
    assert [r.name for r in records.load_all(state)] == ["pr-3-g"]
    assert not records.is_marked_closed(state, 3)
    records.mark_closed(state, 3, merged=True)
    assert records.is_marked_closed(state, 3)
    records.clear_closed(state, 3)
    records.delete(state, "pr-3-g")
    assert records.load(state, "pr-3-g") is None


def test_router_is_placed_only_for_sites_with_environments_on_swarm() -> None:
    plain = site_of()
    assert "router" not in image_refs(plain)
    assert all(s.role != "router" for s in desired_specs(plain, local_inventory(plain), IMAGES))
    with_envs = site_of(app="guestbook", router_port=18000, domain="apps.test")
    router = next(
        s
        for s in desired_specs(with_envs, local_inventory(with_envs), IMAGES)
        if s.role == "router"
    )
    assert image_refs(with_envs)["router"] == "project:router"
    assert router.name == "cidemo-unit-router"
    assert router.ports == ((8000, "127.0.0.1", 18000),)
    assert ("APPS_DOMAIN", "apps.test") in router.env
    deis = site_of(app="guestbook", platform="deis", deis_controller="https://deis.example.com")
    assert "router" not in image_refs(deis)


def test_service_spec_carries_secret_files_never_values() -> None:
    site = site_of(app="guestbook")
    env = names.preview(4, "guestbook")
    value = "s3cret-value-never-in-a-spec"
    mount = SecretMount("DB_PASS", secret_name(site.name, env.name, "DB_PASS", value, KEY))
    spec = service_spec(site, env, "cidemo/guestbook:1", {"URL": "http://x"}, (mount,))
    assert spec.name == "cidemo-unit-app-pr-4-guestbook"
    assert "DB_PASS_FILE=/run/secrets/db_pass" in spec.env_list()
    assert not any("DB_PASS=" in e for e in spec.env_list())
    assert value not in repr(spec) and value not in str(spec.labels)
    assert mount.name != secret_name(site.name, env.name, "DB_PASS", value + "x", KEY)
    assert spec.labels["io.cidemo.env"] == "pr-4-guestbook"
    assert route_key("/p", env.name) == "/p/services/apps/pr-4-guestbook"


KEY = b"n" * 43  # the site's secrets/swarm_secret_names


def public_name(site: str, env: str, key: str, value: str) -> str:
    """The names before: an HMAC keyed with `site/env/key`, which the secret's labels show."""
    digest = hmac.new(f"{site}/{env}/{key}".encode(), value.encode(), hashlib.sha256)
    return f"cidemo-{site}-{digest.hexdigest()[:20]}"


def test_a_secret_name_cannot_be_matched_to_a_guessed_value_without_the_site_key() -> None:
    """From `docker secret ls` and the labels (site, env, key) one could test guesses of a
    low-entropy value offline; under the site's own key the name tells nothing."""
    name = secret_name("unit", "pr-4-guestbook", "S3_ACCESS_KEY", "hunter2", KEY)
    guesses = ["hunter2", "password", "123456", "s3cret"]
    assert name not in {public_name("unit", "pr-4-guestbook", "S3_ACCESS_KEY", g) for g in guesses}
    assert name == secret_name("unit", "pr-4-guestbook", "S3_ACCESS_KEY", "hunter2", KEY)
    assert name != secret_name("unit", "pr-4-guestbook", "S3_ACCESS_KEY", "hunter2", b"o" * 43)
    assert name != secret_name("unit", "pr-5-guestbook", "S3_ACCESS_KEY", "hunter2", KEY)
    assert re.fullmatch(r"cidemo-unit-[0-9a-f]{20}", name)


def test_service_names_must_fit_a_dns_label() -> None:
    site = parse_site(
        yaml.safe_dump({"name": "a" * 30, "environments": {"app": "b" * 22}}), "long.yaml"
    )
    with pytest.raises(UsageError, match="longer than 63"):
        service_spec(site, names.preview(12345, "b" * 22), "x:1", {}, ())


class FakePlatform:
    name = "fake"

    def url_of(self, env: Environment) -> str:
        return f"http://{env.name}.apps.test"

    def database_address(self) -> tuple[str, int]:
        return "proxy", 4006


def test_app_settings_keep_reserved_keys_and_add_app_env() -> None:
    site = site_of(app="guestbook", app_port=8080, app_env={"NODE_ENV": "staging", "URL": "x"})
    env = names.staging("guestbook")
    settings = app_settings(site, env, FakePlatform(), "stage_guestbook")  # type: ignore[arg-type]
    assert settings == {
        "NODE_ENV": "staging",
        "URL": "http://stage-guestbook.apps.test",
        "DB_HOST": "proxy",
        "DB_PORT": "4006",
        "DB_USER": "stage_guestbook",
        "DB_NAME": "stage_guestbook",
        "PORT": "8080",
    }


def test_platform_by_name() -> None:
    assert set(PLATFORMS) == {"swarm", "deis"}
    with pytest.raises(UsageError, match="valid: swarm, deis") as caught:
        platform_for("nomad", None)  # type: ignore[arg-type]
    assert caught.value.exit_code == EXIT_USAGE


@pytest.fixture
def controller() -> Iterator[DeisV1FixtureServer]:
    server = DeisV1FixtureServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_deis_platform_deploys_over_the_v1_api(
    controller: DeisV1FixtureServer, state: StateDir
) -> None:
    site = site_of(
        app="ghost",
        platform="deis",
        deis_controller=controller.url,
        domain="ci-demo.example.com",
    )
    platform = DeisPlatform(site, state, DeisClient(controller.url, TOKEN), ("10.0.0.20", 4006))
    env = names.preview(11, "ghost")
    url = platform.deploy(
        env,
        "registry.ci-demo.example.com:5000/ghost:6dcb09b5b578",
        {"NODE_ENV": "production", "URL": "http://pr-11-ghost.ci-demo.example.com"},
    )
    assert url.startswith("http://pr-11-ghost.")
    calls = [(s.method, s.path) for s in controller.seen]
    assert calls == [
        ("GET", "/v1/apps/pr-11-ghost/"),
        ("POST", "/v1/apps/pr-11-ghost/config/"),
        ("POST", "/v1/apps/pr-11-ghost/builds/"),
    ]
    assert platform.remove(env) is True
    assert controller.seen[-1].method == "DELETE"
    assert platform.remove(names.preview(99, "ghost")) is False


class ListingPlatform(FakePlatform):
    def __init__(self, deployments: list[Deployment]) -> None:
        self.deployments = deployments

    def list(self) -> list[Deployment]:
        return self.deployments


class StubGitHub:
    def __init__(self, closed: set[int]) -> None:
        self.closed = closed
        self.asked: list[tuple[str, int]] = []

    def is_closed(self, repo: str, number: int) -> bool:
        self.asked.append((repo, number))
        return number in self.closed


def test_gc_collects_closed_and_idle_previews_only(state: StateDir) -> None:
    site = site_of(app="g", preview_ttl_hours=24)
    now = dt.datetime(2015, 12, 10, 12, 0, tzinfo=dt.UTC)
    fresh, old = "2015-12-10T08:00:00+00:00", "2015-12-08T08:00:00+00:00"
    for pr, updated, repo in ((5, old, ""), (6, fresh, ""), (7, fresh, "o/r"), (8, fresh, "o/r")):
        records.save(
            state,
            records.EnvRecord(f"pr-{pr}-g", "preview", pr, f"pr_{pr}", old, updated, repo=repo),
        )
    records.mark_closed(state, 6)
    platform = ListingPlatform(
        [Deployment("pr-9-g", "g:1", "", fresh), Deployment("stage-g", "g:1", "", old)]
    )
    ctx = EnvContext(site, state, None, platform, Reporter(quiet=True))  # type: ignore[arg-type]
    github = StubGitHub({7})
    doomed = gc(ctx, dry_run=True, github=github, now=now)  # type: ignore[arg-type]
    assert [(d.env, d.reason.split(" (")[0]) for d in doomed] == [
        ("pr-5-g", "idle since 2015-12-08T08:00:00+00:00"),
        ("pr-6-g", "pull request #6 is closed"),
        ("pr-7-g", "pull request #7 is closed on GitHub"),
    ]
    assert ("o/r", 8) in github.asked and all(n != 9 for _, n in github.asked)
