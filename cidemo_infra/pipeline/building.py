"""Build, then deploy: the path of webhooks, Jenkins and `cidemo env up --build`.

The image of commit `sha` is `<registry>/<app>:<sha>`, built on the node the site names
(`environments.build.node`, default the standalone node), tested, pushed to the site registry,
then deployed as `up` deploys any image. A build that fails or is superseded deploys nothing:
the environment keeps running what it ran.
"""

from __future__ import annotations

import docker
import docker.errors

from cidemo_infra import image_registry
from cidemo_infra.builds import build as builds
from cidemo_infra.builds.source import check_clone_url
from cidemo_infra.envs import names
from cidemo_infra.envs.names import Environment
from cidemo_infra.errors import UsageError
from cidemo_infra.pipeline import operations
from cidemo_infra.pipeline.operations import EnvContext
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir

GIT_TOKEN = "git_token"
GIT_TOKEN_ENV = "CIDEMO_GIT_TOKEN"
APP_LOG_LINES = 100


def require_builds(site: Site) -> None:
    if "environments" not in site.model_fields_set or site.environments.build is None:
        raise UsageError(
            f"site '{site.name}' has no environments.build: it builds no images (add "
            "environments.build, see the README's build keys, and run cidemo provision)"
        )


def default_clone_url(site: Site) -> str:
    build = site.environments.build
    if build is not None and build.repository_url:
        return build.repository_url
    if site.environments.repository:
        return f"https://github.com/{site.environments.repository}.git"
    raise UsageError(
        "--build: no repository to fetch from; give --source URL, or set "
        "environments.build.repository_url or environments.repository"
    )


def built_image(ctx: EnvContext, sha: str) -> str:
    return image_registry.image_of(ctx.site, ctx.session.inventory, sha)


def _target(ctx: EnvContext, is_fork: bool) -> builds.BuildTarget:
    settings = ctx.site.environments.build
    assert settings is not None
    inventory = ctx.session.inventory
    if settings.node:
        nodes = [n for n in inventory.nodes if n.name == settings.node]
        if not nodes:
            known = ", ".join(n.name for n in inventory.nodes)
            raise UsageError(f"environments.build.node: no node '{settings.node}' (nodes: {known})")
        node = nodes[0]
    else:
        node = inventory.of_role("standalone")[0]
    token = None if is_fork else ctx.state.known_secret(GIT_TOKEN, GIT_TOKEN_ENV)
    return builds.BuildTarget(
        client=ctx.session.clients[node.engine],
        engine=node.name,
        settings=settings,
        auth=image_registry.auth_config(ctx.state),
        site=ctx.site.name,
        token=token,
        reporter=ctx.reporter,
    )


def build(
    ctx: EnvContext, env: Environment, sha: str, clone_url: str, *, is_fork: bool, from_event: bool
) -> str:
    """The pushed image of commit `sha` for `env` (BuildFailed, BuildSuperseded)."""
    require_builds(ctx.site)
    check_clone_url(clone_url, from_event=from_event)
    image = built_image(ctx, sha)
    image_registry.trust(ctx.site, ctx.state, ctx.session.inventory)
    target = _target(ctx, is_fork)
    ctx.reporter.step(f"{env.name}: building {sha[:12]} on {target.engine} -> {image}")
    req = builds.BuildRequest(env.name, sha, clone_url, image, is_fork=is_fork)
    pushed = builds.run_build(ctx.state, target, req)
    _login_everywhere(ctx)
    return pushed


def _login_everywhere(ctx: EnvContext) -> None:
    """Every engine of the session may pull from the registry (and a Swarm service created
    through these clients carries the credentials to its tasks)."""
    auth = image_registry.auth_config(ctx.state)
    registry = image_registry.address(ctx.site, ctx.session.inventory)
    for client in ctx.session.clients.values():
        client.login(auth["username"], auth["password"], registry=registry, reauth=True)


def build_and_up(
    ctx: EnvContext,
    env: Environment,
    sha: str,
    clone_url: str,
    *,
    is_fork: bool = False,
    repo: str = "",
    from_event: bool = True,
    commits: tuple[str, ...] = (),
) -> str:
    """Build commit `sha`, then `up` with its image; the URL. Nothing is deployed unless the
    build and its tests passed and no newer commit was asked for meanwhile. Production takes
    the image staging runs when staging runs `sha` or one of `commits` (what was tested there)."""
    if env.kind == "production":
        staged = operations.production_image(ctx, sha, commits)
        if staged != names.image_for(ctx.site.environments.image, ctx.app, sha):
            ctx.reporter.step(f"{env.name}: runs staging's image {staged}, no new build")
            return operations.up(ctx, env, sha, staged, repo=repo)
    if ctx.platform.image_of(env) == built_image(ctx, sha):
        ctx.reporter.step(f"{env.name}: runs the build of {sha[:12]} already; no new build")
        return operations.up(ctx, env, sha, built_image(ctx, sha), is_fork=is_fork, repo=repo)
    image = build(ctx, env, sha, clone_url, is_fork=is_fork, from_event=from_event)
    if builds.wanted(ctx.state, env.name) not in (None, sha):
        raise builds.BuildSuperseded(f"{env.name} now wants a newer commit; {sha[:12]} discarded")
    return operations.up(ctx, env, sha, image, is_fork=is_fork, repo=repo)


def logs(ctx: EnvContext, env: Environment) -> tuple[str | None, str]:
    """(the last build's log or None, the app's recent output)."""
    path = builds.last_log(ctx.state, env.name)
    build_log = builds.read_log(path) if path is not None else None
    return build_log, _app_output(ctx, env)


def _app_output(ctx: EnvContext, env: Environment) -> str:
    if ctx.site.environments.platform != "swarm":
        return "(app output: only the swarm platform's is shown here; use deis logs)"
    from cidemo_infra.platforms.swarm import service_name

    name = service_name(ctx.site.name, env.name)
    standalone = ctx.session.inventory.of_role("standalone")[0]
    client = ctx.session.clients[standalone.engine]
    try:
        chunks = client.api.service_logs(
            name, stdout=True, stderr=True, tail=APP_LOG_LINES, timestamps=True
        )
        text = b"".join(chunks).decode(errors="replace")
    except docker.errors.NotFound:
        return f"(no service {name}: {env.name} does not run)"
    except docker.errors.APIError as exc:
        return f"(app output unavailable: {exc.explanation or exc})"
    return text or "(no output yet)"


def note_request(state: StateDir, env: str, sha: str) -> None:
    """An event asked `env` for commit `sha`: older builds of `env` stop and deploy nothing."""
    builds.request(state, env, sha)
