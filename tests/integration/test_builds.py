"""The platform builds what it deploys: signed deliveries to the real `cidemo webhook serve` of a
site with `environments.build`, whose commits come from a git repository served by `git daemon`
on 127.0.0.1. Each build is fetched by SHA, built on the local engine, tested in its image,
pushed to the site's registry (TLS from the site CA, htpasswd) and deployed behind the router.

The tests share one provisioned site and run in order. Commit statuses go to RecordingGitHub
(tests/support), NOT GitHub.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from cidemo_infra.placement.teardown import remove_site_apps
from tests.conftest import REPO
from tests.integration.conftest import (
    TestSite,
    free_port,
    make_site,
    provision_converged,
    remove_site,
    start_process,
    stop_process,
)
from tests.integration.test_environments import Env, _listens, payload, wait_for, webhook_server

pytestmark = pytest.mark.integration
# The layer-cache and newest-wins cases rebuild the app twice more: make test-builds
# (CIDEMO_BUILDS_FULL=1) runs them, make test the rest (CI's budget).
full_only = pytest.mark.skipif(
    os.environ.get("CIDEMO_BUILDS_FULL") != "1",
    reason="the full build set only: make test-builds (CIDEMO_BUILDS_FULL=1)",
)

GUESTBOOK = REPO / "examples" / "guestbook"
APP = "guestbook"
DOMAIN = "cidemo.test"
PR, FORK_PR = 21, 22
GIT_TOKEN = "gittok-" + secrets.token_hex(12)  # a made-up token: it must never reach a fork
TEST_COMMAND = ["python3", "/usr/local/lib/guestbook/test_guestbook.py"]


@dataclass
class Repos:
    """Two repositories served by one `git daemon`: the site's own and a fork of it."""

    root: Path
    port: int

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def path(self, name: str) -> Path:
        return self.root / f"{name}.git"

    def commit(self, name: str, message: str, files: dict[str, str] | None = None) -> str:
        work = self.path(name)
        for rel, text in (files or {}).items():
            (work / rel).write_text(text)
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "--allow-empty", "-m", message)
        return _git(work, "rev-parse", "HEAD").strip()


def _git(where: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.test",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.test",
    }
    return subprocess.run(
        ["git", "-C", str(where), *args], env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repos]:
    root = tmp_path_factory.mktemp("repos")
    made = Repos(root, free_port())
    for name in ("app", "fork"):
        work = made.path(name)
        shutil.copytree(GUESTBOOK, work)
        _git(work, "init", "-q", "-b", "development")
        made.commit(name, "guestbook")
    proc = start_process(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={made.port}",
            f"--base-path={root}",
            str(root),
        ],
        root / "daemon.log",
    )
    try:
        wait_for("git daemon to listen", lambda: _listens(made.port) or None, 30)
        yield made
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def site(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    made = make_site(
        engine,
        tmp_path_factory.mktemp("builds"),
        domain=DOMAIN,
        environments={
            "app": APP,
            "app_port": 8080,
            "router_port": free_port(),
            "repository": "paulczar/ci-demo",
            "build": {
                "test_command": TEST_COMMAND,
                "fork": {"cpus": 1, "memory_mb": 512, "timeout": 600},
            },
        },
    )
    made.data["services"]["registry"] = {"port": free_port()}
    made.data["timeouts"]["health"] = 480  # a loaded machine: builds run beside other sites
    made.path.write_text(json.dumps(made.data))
    try:
        yield made
    finally:
        remove_site_apps(engine, made.name)
        for image in engine.images.list(filters={"label": "io.cidemo.app-build"}):
            if any(t.startswith(f"127.0.0.1:{_registry_port(made)}/") for t in image.tags):
                with contextlib.suppress(docker.errors.APIError):
                    engine.images.remove(image.id, force=True)
        remove_site([engine], made.name)
        with contextlib.suppress(OSError):
            shutil.rmtree(f"/etc/docker/certs.d/127.0.0.1:{_registry_port(made)}")


def _registry_port(site: TestSite) -> int:
    return int(site.data["services"]["registry"]["port"])


@pytest.fixture(scope="module")
def envs(site: TestSite, repos: Repos) -> Iterator[Env]:
    result = provision_converged(site)
    # under load a Galera registration may lapse for a moment: builds do not depend on them
    lapsed = "smoke checks failed: database registrations" in result.err
    assert result.rc == 0 or lapsed, result.err + result.out
    with webhook_server(site, {"CIDEMO_GIT_TOKEN": GIT_TOKEN}, workers=2) as served:
        yield served


def pull_request(action: str, number: int, sha: str, clone_url: str) -> dict[str, Any]:
    name = "labeled-fork" if action == "labeled" else action
    return payload(
        f"pull_request.{name}",
        number=number,
        pull_request__number=number,
        pull_request__head__sha=sha,
        pull_request__head__repo__clone_url=clone_url,
    )


def final_status(envs: Env, sha: str, timeout: float = 300) -> dict[str, Any]:
    """The success or failure status the server posted on `sha`."""
    posted = wait_for(
        f"a final commit status on {sha[:12]}",
        lambda: (
            [
                r.body
                for r in envs.github.statuses()
                if r.path.endswith(f"/statuses/{sha}") and r.body.get("state") != "pending"
            ]
            or None
        ),
        timeout,
    )
    return posted[-1]


def registry_tags(site: TestSite, auth: bool = True) -> list[str]:
    """The registry's tags of the app, over HTTPS verified against the site CA."""
    context = ssl.create_default_context(cafile=str(site.state / "tls" / "ca.pem"))
    request = urllib.request.Request(f"https://127.0.0.1:{_registry_port(site)}/v2/{APP}/tags/list")
    if auth:
        import base64

        token = base64.b64encode(f"cidemo:{site.secret('registry_password')}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return list(json.loads(response.read())["tags"] or [])


def test_the_registry_is_placed_with_tls_and_authentication(envs: Env) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        registry_tags(envs.site, auth=False)
    assert refused.value.code == 401
    smoke = envs.site.cidemo("smoke")
    (line,) = [ln for ln in smoke.out.splitlines() if ln.startswith("registry ")]
    assert line.split()[1] == "ok", smoke.out + smoke.err


def test_pull_request_is_fetched_built_tested_pushed_and_previewed(
    engine: docker.DockerClient, envs: Env, repos: Repos
) -> None:
    sha = _git(repos.path("app"), "rev-parse", "HEAD").strip()
    env = f"pr-{PR}-{APP}"
    status, text, _ = envs.deliver(
        "pull_request", pull_request("opened", PR, sha, repos.url("app"))
    )
    assert status == 202, text
    page = wait_for(f"{env} answering with {sha[:12]}", lambda: envs.serving(env, sha), 400)
    assert page["database"] == "stage_guestbook"  # staging's name, in the preview's own branch
    engine.containers.get(f"cidemo-{envs.site.name}-db-{env}")  # that branch
    image = f"127.0.0.1:{_registry_port(envs.site)}/{APP}:{sha}"
    spec = engine.api.inspect_service(f"cidemo-{envs.site.name}-app-{env}")
    assert spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith(image)
    assert sha in registry_tags(envs.site)
    done = final_status(envs, sha)
    assert done["state"] == "success"
    logs = envs.cli("logs", env)
    assert logs.rc == 0, logs.err
    assert "tests passed" in logs.out and "OK" in logs.out  # the build log, with unittest's
    assert f"guestbook {sha}: listening" in logs.out  # the app's own output
    assert GIT_TOKEN not in logs.out


def test_failing_tests_deploy_nothing_and_post_a_generic_failure(envs: Env, repos: Repos) -> None:
    env = f"pr-{PR}-{APP}"
    running = envs.serving(env)
    assert running is not None
    source = (repos.path("app") / "guestbook.py").read_text()
    broken = source.replace("{html.escape(r['message'])}", "{r['message']}")
    assert broken != source
    sha = repos.commit("app", "render messages unescaped", {"guestbook.py": broken})
    status, text, _ = envs.deliver(
        "pull_request", pull_request("synchronize", PR, sha, repos.url("app"))
    )
    assert status == 202, text
    done = final_status(envs, sha)
    assert done["state"] == "failure"
    assert done["description"].startswith("build or tests failed; ref ")
    assert "target_url" not in done
    assert envs.serving(env, running["version"]) is not None  # the old version still runs
    log = (envs.site.state / "builds" / env / f"{sha}.log").read_text()
    assert "FAILED: the tests failed" in log
    assert sha not in registry_tags(envs.site)
    # the fix: revert, and the preview moves on
    fixed = repos.commit("app", "escape again", {"guestbook.py": source})
    envs.deliver("pull_request", pull_request("synchronize", PR, fixed, repos.url("app")))
    wait_for(f"{env} answering with {fixed[:12]}", lambda: envs.serving(env, fixed), 400)


@full_only
def test_readme_only_change_reuses_every_layer_before_the_sources(envs: Env, repos: Repos) -> None:
    env = f"pr-{PR}-{APP}"
    readme = (repos.path("app") / "README.md").read_text()
    sha = repos.commit("app", "docs only", {"README.md": readme + "\nOne more line.\n"})
    result = envs.cli(
        "up",
        "--pr",
        str(PR),
        "--ref",
        sha,
        "--build",
        "--source",
        repos.url("app"),
        "--lock-wait",
        "300",
    )
    assert result.rc == 0, result.err
    log = (envs.site.state / "builds" / env / f"{sha}.log").read_text()
    # each step's block: its header line, then what the builder said about it
    blocks = log.split("\nStep ")[1:]
    heads = [b.splitlines()[0] for b in blocks]
    copy_at = next(i for i, h in enumerate(heads) if " : COPY " in h)
    made = [b for b, h in zip(blocks, heads, strict=True) if " : RUN " in h or " : COPY " in h]
    made = made[: sum(1 for h in heads[: copy_at + 1] if " : RUN " in h or " : COPY " in h)]
    assert made and all("Using cache" in b for b in made), log
    wait_for(f"{env} answering with {sha[:12]}", lambda: envs.serving(env, sha), 120)


@full_only
def test_newest_of_two_quick_events_is_built_and_the_older_is_discarded(
    envs: Env, repos: Repos
) -> None:
    env = f"pr-{PR}-{APP}"
    older = repos.commit("app", "older", {"CHANGES": "older\n"})
    newer = repos.commit("app", "newer", {"CHANGES": "newer\n"})
    for sha in (older, newer):
        status, text, _ = envs.deliver(
            "pull_request", pull_request("synchronize", PR, sha, repos.url("app"))
        )
        assert status == 202, text
    wait_for(f"{env} answering with {newer[:12]}", lambda: envs.serving(env, newer), 400)
    discarded = final_status(envs, older)
    assert discarded["state"] == "failure"
    assert discarded["description"].startswith("superseded by a newer commit")
    assert older not in registry_tags(envs.site)


def test_fork_build_is_isolated_limited_and_shares_no_cache(
    engine: docker.DockerClient, envs: Env, repos: Repos
) -> None:
    name = envs.site.name
    targets = {
        "etcd": (_address(engine, f"cidemo-{name}-etcd"), 2379),
        "galera": (_address(engine, f"cidemo-{name}-galera-deis-1"), 3306),
        "galera-replication": (_address(engine, f"cidemo-{name}-galera-deis-1"), 4567),
    }
    etcd_port = int(envs.site.data["services"]["etcd"]["port"])
    probe = (
        "import json, os, socket\n"
        f"targets = {targets!r}\n"
        "route = [ln.split() for ln in open('/proc/net/route')][1:]\n"
        "gw = next(int(r[2], 16) for r in route if r[1] == '00000000')\n"
        "host = socket.inet_ntoa(gw.to_bytes(4, 'little'))\n"
        f"targets['etcd-published-via-host'] = (host, {etcd_port})\n"
        "out = {}\n"
        "for key, (host, port) in targets.items():\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=3).close(); out[key] = 'open'\n"
        "    except OSError as exc:\n"
        "        out[key] = 'closed'\n"
        "mem = '/sys/fs/cgroup/memory.max'\n"
        "old = '/sys/fs/cgroup/memory/memory.limit_in_bytes'\n"
        "out['memory'] = open(mem if os.path.exists(mem) else old).read().strip()\n"
        "cpus = '/sys/fs/cgroup/cpuset.cpus.effective'\n"
        "out['cpus'] = open(cpus).read().strip() if os.path.exists(cpus) else '?'\n"
        "out['env'] = sorted(os.environ)\n"
        "print(json.dumps(out))\n"
    )
    dockerfile = (repos.path("fork") / "Dockerfile").read_text()
    dockerfile += "\nUSER root\nCOPY probe.py /probe.py\nRUN python3 /probe.py > /probe.json\n"
    dockerfile += "USER guestbook\n"
    sha = repos.commit("fork", "a probe", {"probe.py": probe, "Dockerfile": dockerfile})
    env = f"pr-{FORK_PR}-{APP}"
    delivered = pull_request("labeled", FORK_PR, sha, repos.url("fork"))
    status, text, _ = envs.deliver("pull_request", delivered)
    assert status == 202, text
    done = final_status(envs, sha, 600)
    assert done["state"] == "success", (envs.site.state / "builds" / env / "last.log").read_text()
    image = f"127.0.0.1:{_registry_port(envs.site)}/{APP}:{sha}"
    seen = json.loads(engine.containers.run(image, ["/probe.json"], entrypoint="cat", remove=True))
    probed = {k: v for k, v in seen.items() if k not in ("memory", "cpus", "env")}
    assert probed == {k: "closed" for k in [*targets, "etcd-published-via-host"]}
    assert seen["cpus"] in ("0", "?")
    assert int(seen["memory"]) == 512 * 1024 * 1024
    assert not any("TOKEN" in k or "PASS" in k for k in seen["env"])
    log = (envs.site.state / "builds" / env / f"{sha}.log").read_text()
    assert "Using cache" not in log  # no trusted layer was reused
    assert GIT_TOKEN not in log
    # its layers are gone from the build cache: the image here came back from the registry
    assert engine.images.get(image).attrs.get("Parent", "") == ""
    wait_for(f"{env} answering with {sha[:12]}", lambda: envs.serving(env, sha), 120)


def _address(engine: docker.DockerClient, container: str) -> str:
    networks = engine.containers.get(container).attrs["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


def test_push_to_development_builds_and_updates_staging(envs: Env, repos: Repos) -> None:
    sha = repos.commit("app", "staging", {"CHANGES": "staging\n"})
    push = payload(
        "push.development", after=sha, repository__clone_url=repos.url("app"), commits=[]
    )
    status, text, _ = envs.deliver("push", push)
    assert status == 202, text
    env = f"stage-{APP}"
    page = wait_for(f"{env} answering with {sha[:12]}", lambda: envs.serving(env, sha), 400)
    assert page["database"] == "stage_guestbook"
    assert final_status(envs, sha)["state"] == "success"
