"""Build one commit into the image an environment runs: fetch, build, test, push.

Each environment builds one commit at a time (a lock file), and only the newest one asked for:
`request` records the commit each new event wants, and a build whose commit is no longer the
wanted one stops at its next step (a running `docker build` is cancelled by closing its
stream) and deploys nothing. The log of every build is kept under `<state>/builds/<env>/`
(`last.log` is the newest).

A fork's pull request runs untrusted code: its build gets no token and no build cache (the
layers it makes are deleted after the push, and the image is pulled back, so no trusted build
can reuse them), runs its steps on a bridge network of its own (Docker isolates it from the site
network, where etcd and Galera are; the tool's ports are published on 127.0.0.1 only), and has
CPU, memory and time limits (`environments.build.fork`).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors

from cidemo_infra import images
from cidemo_infra.builds.source import fetch_commit
from cidemo_infra.console import Reporter
from cidemo_infra.envs.locks import registry_push_lock
from cidemo_infra.errors import CidemoError
from cidemo_infra.site.model import Build
from cidemo_infra.state import StateDir

LOG_KEEP = 20  # build logs kept per environment
_SHA = re.compile(r"^[0-9a-f]{7,64}$")
LABEL_BUILD = "io.cidemo.build-of"


class BuildFailed(CidemoError):
    """The build or the app's tests failed: the environment keeps what it ran."""


class BuildSuperseded(CidemoError):
    """A newer commit was asked for the same environment: this build deploys nothing."""


@dataclass(frozen=True)
class BuildRequest:
    env: str
    sha: str
    clone_url: str
    image: str  # <registry>/<app>:<sha>
    is_fork: bool = False


@dataclass
class BuildTarget:
    """Where and how: the engine that builds, the registry it pushes to."""

    client: docker.DockerClient
    engine: str
    settings: Build
    auth: dict[str, str]
    site: str
    token: str | None = None
    reporter: Reporter = field(default_factory=lambda: Reporter(quiet=True))


def builds_dir(state: StateDir, env: str) -> Path:
    return state.path / "builds" / env


def last_log(state: StateDir, env: str) -> Path | None:
    path = builds_dir(state, env) / "last.log"
    return path if path.is_file() else None


def request(state: StateDir, env: str, sha: str) -> None:
    """Record that `env` now wants commit `sha`; an older build of it stops at its next step."""
    folder = builds_dir(state, env)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = folder / f".wanted.{os.getpid()}"
    tmp.write_text(sha + "\n")
    tmp.replace(folder / "wanted")


def wanted(state: StateDir, env: str) -> str | None:
    path = builds_dir(state, env) / "wanted"
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def build_lock(state: StateDir, env: str) -> Iterator[None]:
    """One build at a time per environment (waits for the one running)."""
    folder = builds_dir(state, env)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_build(state: StateDir, target: BuildTarget, req: BuildRequest) -> str:
    """Fetch, build, test and push `req`; the pushed image. BuildFailed, BuildSuperseded."""
    if not _SHA.match(req.sha):
        raise BuildFailed(f"'{req.sha[:80]}' is not a commit id")
    if wanted(state, req.env) is None:
        request(state, req.env, req.sha)
    with build_lock(state, req.env):
        folder = builds_dir(state, req.env)
        log_path = folder / f"{req.sha}.log"
        with open(log_path, "w") as log:
            _link_last(folder, log_path)
            started = time.monotonic()
            try:
                image = _run(state, target, req, folder, log)
            except BuildSuperseded as exc:
                log.write(f"superseded: {exc}\n")
                _untag(target, req)
                raise
            except BuildFailed as exc:
                log.write(f"FAILED: {exc}\n")
                _untag(target, req)
                raise
            log.write(f"built, tested and pushed {image} in {time.monotonic() - started:.1f} s\n")
        _prune_logs(folder)
        return image


def _run(
    state: StateDir, target: BuildTarget, req: BuildRequest, folder: Path, log: IO[str]
) -> str:
    settings = target.settings
    timeout = settings.fork.timeout if req.is_fork else settings.timeout
    deadline = time.monotonic() + timeout

    def check() -> None:
        newest = wanted(state, req.env)
        if newest is not None and newest != req.sha:
            raise BuildSuperseded(f"{req.env} now wants {newest[:12]}; {req.sha[:12]} discarded")
        if time.monotonic() > deadline:
            raise BuildFailed(f"the build took longer than {timeout} s")

    check()
    log.write(
        f"build of {req.env} at {req.sha} ({'fork: isolated' if req.is_fork else 'trusted'})\n"
    )
    source = folder / "src"
    try:
        fetch_commit(
            req.clone_url, req.sha, source, log, token=None if req.is_fork else target.token
        )
        check()
        network = _fork_network(target, req) if req.is_fork else "host"
        try:
            _docker_build(target, req, source, network, log, check)
            check()
            _test(target, req, log, deadline)
        finally:
            if req.is_fork:
                with contextlib.suppress(docker.errors.APIError):
                    target.client.networks.get(network).remove()
        check()
        with registry_push_lock(state):  # the registry collects no garbage under a push
            _push(target, req, log)
        if req.is_fork:
            _forget_layers(target, req, log)
    except docker.errors.DockerException as exc:
        raise BuildFailed(f"engine {target.engine}: {type(exc).__name__}: {exc}") from None
    finally:
        shutil.rmtree(source, ignore_errors=True)
    return req.image


def _fork_network(target: BuildTarget, req: BuildRequest) -> str:
    """A bridge of this build's own: outside the site network, no inter-container traffic."""
    name = f"cidemo-{target.site}-build-{req.env}"[:60]
    with contextlib.suppress(docker.errors.NotFound):
        target.client.networks.get(name).remove()
    target.client.networks.create(
        name,
        driver="bridge",
        labels={"io.cidemo.site": target.site, "io.cidemo.role": "build", LABEL_BUILD: req.env},
        options={"com.docker.network.bridge.enable_icc": "false"},
    )
    return name


def _limits(settings: Build) -> dict[str, Any]:
    cpus = max(1, math.ceil(settings.fork.cpus))
    memory = settings.fork.memory_mb * 1024 * 1024
    return {"memory": memory, "memswap": memory, "cpusetcpus": f"0-{cpus - 1}"}


def _docker_build(
    target: BuildTarget,
    req: BuildRequest,
    source: Path,
    network: str,
    log: IO[str],
    check: Callable[[], None],
) -> None:
    settings = target.settings
    context = (source / settings.context).resolve()
    if not context.is_relative_to(source.resolve()) or not context.is_dir():
        raise BuildFailed(f"build context '{settings.context}' is not a folder of the commit")
    if not (context / settings.dockerfile).is_file():
        raise BuildFailed(f"no {settings.dockerfile} in the build context '{settings.context}'")
    base = images.base_image(target.client, target.reporter)
    extra_ca = images.local_ca_certificates()
    args = {
        "BASE_IMAGE": base,
        **({"EXTRA_CA_CERTS": extra_ca} if extra_ca else {}),
        **settings.args,
        "APP_VERSION": req.sha,
    }
    kwargs: dict[str, Any] = {
        "path": str(context),
        "dockerfile": settings.dockerfile,
        "tag": req.image,
        "buildargs": args,
        "rm": True,
        "forcerm": True,
        "decode": True,
        "network_mode": network,
        "labels": {
            "io.cidemo.app-build": req.env,
            "org.opencontainers.image.revision": req.sha,
        },
    }
    if req.is_fork:
        kwargs |= {"nocache": True, "container_limits": _limits(settings)}
    log.write(f"docker build on engine {target.engine} (network {network})\n")
    stream = target.client.api.build(**kwargs)
    error = None
    try:
        for chunk in stream:
            if "stream" in chunk:
                log.write(str(chunk["stream"]))
            if "error" in chunk:
                error = str(chunk["error"]).strip()
                log.write(f"error: {error}\n")
            log.flush()
            check()  # a newer commit, or the deadline
    except (BuildSuperseded, BuildFailed):
        # dockerd cancels a build whose client went away: close the connections it streams on
        with contextlib.suppress(Exception):
            stream.close()
            target.client.api.close()
        raise
    if error is not None:
        raise BuildFailed("the image did not build (see the build log)")


def _test(target: BuildTarget, req: BuildRequest, log: IO[str], deadline: float) -> None:
    """`test_command` in the built image (instead of its entrypoint): no network, limits for
    forks; a non-zero exit fails the build."""
    command = target.settings.test_command
    if not command:
        log.write("no environments.build.test_command: no tests run\n")
        return
    log.write(f"test: {' '.join(command)}\n")
    kwargs: dict[str, Any] = {
        "network_mode": "none",
        "labels": {"io.cidemo.site": target.site, "io.cidemo.role": "build-test"},
    }
    if req.is_fork:
        fork = target.settings.fork
        memory = fork.memory_mb * 1024 * 1024
        kwargs |= {"nano_cpus": int(fork.cpus * 1e9), "mem_limit": memory, "memswap_limit": memory}
    # the command replaces the image's entrypoint: the tests, not the app, run
    container = target.client.containers.create(
        req.image, entrypoint=command[:1], command=command[1:], **kwargs
    )
    try:
        container.start()
        left = max(1.0, deadline - time.monotonic())
        try:
            code = int(container.wait(timeout=left).get("StatusCode", 1))
        except Exception:  # the wait's read timeout: the tests ran out of time
            with contextlib.suppress(docker.errors.APIError):
                container.kill()
            raise BuildFailed("the tests took longer than the build's time limit") from None
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        log.write(output if output.endswith("\n") or not output else output + "\n")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    if code != 0:
        raise BuildFailed(f"the tests failed (exit {code})")
    log.write("tests passed\n")


def _push(target: BuildTarget, req: BuildRequest, log: IO[str]) -> None:
    repository, tag = req.image.rsplit(":", 1)
    log.write(f"push {req.image}\n")
    for chunk in target.client.api.push(
        repository, tag=tag, auth_config=target.auth, stream=True, decode=True
    ):
        if "error" in chunk:
            log.write(f"error: {chunk['error']}\n")
            raise BuildFailed("the image could not be pushed to the site registry")
        if chunk.get("status") and "id" not in chunk:
            log.write(f"{chunk['status']}\n")


def _forget_layers(target: BuildTarget, req: BuildRequest, log: IO[str]) -> None:
    """Delete the fork's image with its intermediate layers, then pull it back from the registry:
    a pulled image has no build history here, so no later build takes it as cache."""
    target.client.images.remove(req.image, noprune=False)
    repository, tag = req.image.rsplit(":", 1)
    target.client.images.pull(repository, tag=tag, auth_config=target.auth)
    log.write("fork build: its layers were removed from the build cache; image pulled back\n")


def _untag(target: BuildTarget, req: BuildRequest) -> None:
    """An image that was not pushed is not a deployable one: its tag goes (a trusted build's
    layers stay as cache; a fork's go with it)."""
    with contextlib.suppress(docker.errors.DockerException):
        target.client.images.remove(req.image, noprune=not req.is_fork)


def _link_last(folder: Path, log_path: Path) -> None:
    link = folder / "last.log"
    tmp = folder / f".last.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(log_path.name)
    tmp.replace(link)


def _prune_logs(folder: Path) -> None:
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in logs if p.name != "last.log"][LOG_KEEP:]:
        old.unlink(missing_ok=True)


def read_log(path: Path, limit: int = 200_000) -> str:
    data = path.read_bytes()[-limit:]
    return io.TextIOWrapper(io.BytesIO(data), errors="replace").read()
