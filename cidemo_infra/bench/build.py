"""`make bench`, builds: a signed `pull_request` webhook to the preview answering at its URL with
the new commit, on examples/guestbook, with a cold build cache and with a warm one after a
one-line change, each beside the same steps by hand in the same run (`git fetch` of the commit,
`docker build`, `docker service create` of the preview's task template with that image, until
its task is healthy).

`run` needs a provisioned local site with `environments.build` (its registry placed) and
`environments.repository`. It serves two copies of examples/guestbook with `git daemon` on
127.0.0.1, runs `cidemo webhook serve` for the site, and removes what it made, also when it
fails. "Cold" starts each Dockerfile with a line of its own, so no layer of an earlier build
matches; the by-hand builds change other lines than the webhook's, so neither reuses the other's
layers. Timings are measured here and never asserted by tests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from cidemo_infra import images
from cidemo_infra.console import Reporter
from cidemo_infra.engines import client_for
from cidemo_infra.errors import UsageError
from cidemo_infra.placement.specs import apps_domain
from cidemo_infra.platforms.swarm import service_name
from cidemo_infra.site import load_site
from cidemo_infra.webhook.signature import sign

REPO = Path(__file__).resolve().parents[2]
GUESTBOOK = REPO / "examples" / "guestbook"
PR = 9101
BUILD = {"test_command": ["python3", "/usr/local/lib/guestbook/test_guestbook.py"]}  # the site's
TIMEOUT = 900.0
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@cidemo.test",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@cidemo.test",
}


def run(site_path: str | Path, state_dir: str | Path) -> list[list[str]]:
    """Rows of (measurement, cidemo, baseline, ratio)."""
    site = load_site(str(site_path))
    envs = site.environments
    if site.target != "local" or envs.build is None or not envs.repository:
        raise UsageError(
            f"{site_path}: the build bench needs a local site with environments.build and "
            "environments.repository"
        )
    state = Path(state_dir)
    client = client_for(images.LOCAL_ENGINE, node="local")
    work = Path(tempfile.mkdtemp(prefix="cidemo-bench-build-"))
    port = _free_port()
    daemon = _git_daemon(work, port)
    hook_port = _free_port()
    secret = secrets.token_urlsafe(24)
    (state / "secrets").mkdir(parents=True, exist_ok=True)
    secret_file = state / "secrets" / "webhook_secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    server = _webhook(site_path, state, hook_port, work / "webhook.log")
    env = f"pr-{PR}-{envs.app}"
    host = f"{env}.{apps_domain(site)}"
    made_services: list[str] = []
    made_images: list[str] = []
    try:
        _wait_port(hook_port)
        base = images.base_image(client, Reporter(quiet=True))
        app = _repo(work / "app.git", f"bench-cold-{secrets.token_hex(4)}")
        cold_sha = _head(app)
        url = f"git://127.0.0.1:{port}/app.git"

        def via_webhook(action: str, sha: str) -> float:
            start = time.monotonic()
            _deliver(hook_port, secret, envs.repository or "", action, sha, url)
            _until_version(envs.router_port, host, sha, start)
            return time.monotonic() - start

        cold = via_webhook("opened", cold_sha)
        warm_sha = _one_line(app, "# one line changed by the bench (webhook)")
        warm = via_webhook("synchronize", warm_sha)

        template = client.api.inspect_service(service_name(site.name, env))["Spec"]
        hand = _repo(work / "hand.git", f"bench-cold-hand-{secrets.token_hex(4)}")
        hand_url = f"git://127.0.0.1:{port}/hand.git"

        def by_hand(sha: str) -> float:
            tag = f"cidemo/guestbook:bench-hand-{sha[:12]}"
            name = f"cidemo-bench-hand-{secrets.token_hex(3)}"
            made_images.append(tag)
            start = time.monotonic()
            _by_hand(client, work / f"fetch-{sha[:12]}", hand_url, sha, tag, base, template, name)
            made_services.append(name)
            _until_healthy(client, name, start)
            return time.monotonic() - start

        hand_cold = by_hand(_head(hand))
        hand_warm = by_hand(_one_line(hand, "# one line changed by the bench (by hand)"))
    finally:
        for name in made_services:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_service(name)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cidemo_infra",
                "env",
                "down",
                "--pr",
                str(PR),
                "--yes",
                "--site",
                str(site_path),
                "--state-dir",
                str(state),
                "--lock-wait",
                "120",
            ],
            capture_output=True,
            check=False,
            timeout=TIMEOUT,
        )
        server.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(60)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        for tag in made_images:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(tag)
        shutil.rmtree(work, ignore_errors=True)
    return [
        [
            "webhook -> preview answers, cold build cache (fetch, build, test, push, deploy)",
            f"{cold:.1f} s",
            f"by hand: git fetch + docker build + service create, {hand_cold:.1f} s",
            f"{cold / hand_cold:.2f}x",
        ],
        [
            "webhook -> preview answers, warm cache, one-line change (goal <= 1.3x)",
            f"{warm:.1f} s",
            f"by hand, the same change, {hand_warm:.1f} s",
            f"{warm / hand_warm:.2f}x",
        ],
    ]


def _git(where: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(where), *args],
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _repo(path: Path, marker: str) -> Path:
    """examples/guestbook as a repository whose Dockerfile starts with a line of its own."""
    shutil.copytree(GUESTBOOK, path, ignore=shutil.ignore_patterns("__pycache__"))
    dockerfile = path / "Dockerfile"
    lines = dockerfile.read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("FROM ")) + 1
    lines.insert(at, f'RUN echo "{marker}" >/etc/cidemo-bench')
    dockerfile.write_text("\n".join(lines) + "\n")
    _git(path, "init", "-q", "-b", "development")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "guestbook")
    return path


def _head(path: Path) -> str:
    return _git(path, "rev-parse", "HEAD")


def _one_line(path: Path, line: str) -> str:
    source = path / "guestbook.py"
    source.write_text(source.read_text() + line + "\n")
    _git(path, "commit", "-q", "-am", "one line")
    return _head(path)


def _git_daemon(root: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={root}",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _webhook(site: str | Path, state: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIDEMO_GITHUB")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cidemo_infra",
                "webhook",
                "serve",
                "--site",
                str(site),
                "--state-dir",
                str(state),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "NO_COLOR": "1"},
            cwd=REPO,
            start_new_session=True,
        )


def _deliver(port: int, secret: str, repo: str, action: str, sha: str, url: str) -> None:
    """A signed pull_request delivery of the site's own repository, as GitHub sends it."""
    owner = repo.split("/")[0]
    head_repo = {"full_name": repo, "clone_url": url}
    payload = {
        "action": action,
        "number": PR,
        "pull_request": {
            "number": PR,
            "author_association": "OWNER",
            "user": {"login": owner},
            "labels": [],
            "base": {"ref": "development", "repo": {"full_name": repo}},
            "head": {"sha": sha, "ref": "bench", "repo": head_repo},
        },
        "repository": {"full_name": repo, "clone_url": url},
        "sender": {"login": owner},
    }
    body = json.dumps(payload).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/github",
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": sign(secret, body),
            },
        )
        response = conn.getresponse()
        text = response.read().decode(errors="replace").strip()
    finally:
        conn.close()
    if response.status != 202 or not text.startswith("accepted"):
        raise RuntimeError(f"bench: the webhook answered {response.status} {text[:200]}")


def _until_version(port: int, host: str, sha: str, start: float) -> None:
    while time.monotonic() - start < TIMEOUT:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz", headers={"Host": host})
            response = conn.getresponse()
            response.read()
            if response.status == 200 and response.getheader("X-App-Version") == sha:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise TimeoutError(f"bench: {host} did not answer with {sha[:12]} in {TIMEOUT:.0f} s")


def _by_hand(
    client: docker.DockerClient,
    folder: Path,
    url: str,
    sha: str,
    tag: str,
    base: str,
    template: dict[str, Any],
    name: str,
) -> None:
    """git fetch, docker build (the CLI), docker service create (the preview's task template)."""
    folder.mkdir(parents=True)
    _git(folder, "init", "-q")
    _git(folder, "fetch", "-q", "--depth", "1", url, sha)
    _git(folder, "checkout", "-q", sha)
    subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            f"APP_VERSION={sha}",
            "-t",
            tag,
            str(folder),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    task = json.loads(json.dumps(template["TaskTemplate"]))
    task["ContainerSpec"]["Image"] = tag
    client.api.create_service(
        task,
        name=name,
        labels={"io.cidemo.bench": "build"},
        mode=docker.types.ServiceMode("replicated", replicas=1),
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
    )


def _until_healthy(client: docker.DockerClient, service: str, start: float) -> None:
    flt = {"label": f"com.docker.swarm.service.name={service}"}
    while time.monotonic() - start < TIMEOUT:
        for container in client.api.containers(filters=flt):
            if "(healthy)" in container.get("Status", ""):
                return
        time.sleep(0.1)
    raise TimeoutError(f"bench: {service} not healthy in {TIMEOUT:.0f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"bench: the webhook server did not listen on {port}")
