"""Builds from source, the parts that need no engine: the site keys, where a build may fetch
from, how a token reaches git, the registry's container spec, and which build of an
environment wins."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cidemo_infra import image_registry
from cidemo_infra.builds import build as builds
from cidemo_infra.builds.source import check_clone_url, fetch_commit, git_env
from cidemo_infra.errors import UsageError
from cidemo_infra.placement.specs import desired_specs, image_refs
from cidemo_infra.site import parse_site
from cidemo_infra.site.load import SiteError
from cidemo_infra.state import StateDir
from cidemo_infra.targets.local import local_inventory

pytestmark = pytest.mark.unit

BASE = "name: b\nenvironments:\n  app: guestbook\n"


def test_a_string_is_the_build_source_as_before() -> None:
    site = parse_site(BASE + "  build: ../../examples/guestbook\n")
    assert site.environments.build is not None
    assert site.environments.build.source == "../../examples/guestbook"
    assert site.environments.build.dockerfile == "Dockerfile"


def test_build_keys() -> None:
    site = parse_site(
        BASE
        + "  build:\n    context: app\n    dockerfile: docker/Dockerfile\n"
        + "    args: {MODE: prod}\n    test_command: [make, test]\n"
        + "    fork: {cpus: 0.5, memory_mb: 256, timeout: 60}\n"
    )
    build = site.environments.build
    assert build is not None
    assert (build.context, build.dockerfile, build.args) == (
        "app",
        "docker/Dockerfile",
        {"MODE": "prod"},
    )
    assert build.test_command == ["make", "test"]
    assert (build.fork.cpus, build.fork.memory_mb, build.fork.timeout) == (0.5, 256, 60)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ("  build:\n    context: ../up\n", "environments.build.context"),
        ("  build:\n    dockerfile: a/../../b\n", "environments.build.dockerfile"),
        ("  build:\n    context: /abs\n", "environments.build.context"),
        ("  build:\n    args: {'bad-name': x}\n", "environments.build.args"),
        ("  build:\n    fork: {memory_mb: 1}\n", "environments.build.fork.memory_mb"),
        ("  build:\n    colour: red\n", "environments.build.colour"),
    ],
)
def test_bad_build_keys_name_their_path(body: str, path: str) -> None:
    with pytest.raises(SiteError) as err:
        parse_site(BASE + body)
    assert path in str(err.value)


@pytest.mark.parametrize(
    "url",
    ["https://github.com/o/r.git", "git://127.0.0.1:9418/r.git", "http://[::1]:80/r.git"],
)
def test_clone_urls_an_event_may_name(url: str) -> None:
    assert check_clone_url(url, from_event=True) == url


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/repos/secret.git",
        "/srv/repos/secret.git",
        "http://example.com/r.git",
        "git://10.0.0.5/r.git",
        "https://user:pw@github.com/o/r.git",
        "ssh://git@github.com/o/r.git",
        "ext::sh -c touch% /tmp/pwned",
    ],
)
def test_clone_urls_an_event_may_not_name(url: str) -> None:
    with pytest.raises(UsageError):
        check_clone_url(url, from_event=True)


def test_the_operator_may_name_a_local_repository() -> None:
    assert check_clone_url("/srv/app", from_event=False) == "/srv/app"
    assert check_clone_url("file:///srv/app", from_event=False) == "file:///srv/app"


def test_a_token_reaches_git_as_a_header_in_its_environment_only() -> None:
    env = git_env("tok-123")
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
    assert "tok-123" not in env["GIT_CONFIG_VALUE_0"]  # base64 of x-access-token:tok-123
    assert "GIT_CONFIG_COUNT" not in git_env(None)


def _commit(repo: Path, text: str) -> str:
    (repo / "f").write_text(text)
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["git", "-C", str(repo), "add", "f"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", text], check=True, env=env)
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def test_fetch_takes_exactly_the_commit_asked_for(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    first = _commit(repo, "first")
    _commit(repo, "second")
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:
        tree = fetch_commit(f"file://{repo}", first, tmp_path / "src", log, token="tok-xyz")
    assert (tree / "f").read_text() == "first"
    assert not (tree / ".git").exists()
    assert "tok-xyz" not in log_path.read_text()


def test_the_registry_is_placed_on_the_standalone_node_with_its_secrets_as_files() -> None:
    site = parse_site(
        BASE + '  build: {test_command: ["true"]}\nservices:\n  registry: {port: 5999}\n'
    )
    inventory = local_inventory(site)
    specs = desired_specs(site, inventory, {k: f"img-{k}" for k in [*image_refs(site), "etcd"]})
    (spec,) = [s for s in specs if s.role == "registry"]
    assert spec.node == "standalone-1"
    assert spec.ports == ((5000, "127.0.0.1", 5999),)
    assert spec.volumes == (("cidemo-b-registry-data", "/var/lib/docker-registry"),)
    assert set(spec.secrets) == set(image_registry.SECRETS)
    assert not any("password" in v.lower() for _, v in spec.env)
    assert (
        image_registry.image_of(site, inventory, "ab" * 20)
        == f"127.0.0.1:5999/guestbook:{'ab' * 20}"
    )


def test_no_registry_without_builds() -> None:
    site = parse_site(BASE)
    assert "registry" not in image_refs(site)


def test_the_newest_commit_asked_for_wins(tmp_path: Path) -> None:
    state = StateDir(tmp_path, "b")
    assert builds.wanted(state, "pr-1-app") is None
    builds.request(state, "pr-1-app", "a" * 40)
    builds.request(state, "pr-1-app", "b" * 40)
    assert builds.wanted(state, "pr-1-app") == "b" * 40
    assert builds.wanted(state, "pr-2-app") is None
