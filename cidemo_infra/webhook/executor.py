"""The executor `cidemo webhook serve` uses: intents become environment actions (envs package).

- `PreviewUp`: the preview of the pull request runs `environments.image` of the head commit;
  a pull request from a fork gets its own database credentials and no app secrets;
- `PreviewDown`: the pull request is marked closed, then its preview is removed (a removal that
  fails is finished by `cidemo env gc`);
- `StagingUp`: staging runs the image of the pushed commit;
- `ProductionUp`: production runs the exact image staging runs when staging runs the pushed
  commit or one the push brought in (a merge of the staging branch), else the image of the commit.

A site with `environments.build` builds the commit first (fetched from the event's clone URL),
tests and pushes it (`pipeline.building`); a failed build deploys nothing. Each queued intent
notes its commit at once, so an older build of the same environment stops and is discarded.
"""

from __future__ import annotations

from cidemo_infra.builds.build import BuildFailed, BuildSuperseded
from cidemo_infra.builds.source import FetchError
from cidemo_infra.console import Reporter
from cidemo_infra.envs import names, records
from cidemo_infra.errors import UsageError
from cidemo_infra.pipeline import building, operations
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir
from cidemo_infra.webhook.events import (
    ExecutionResult,
    Ignored,
    Intent,
    IntentExecutor,
    PreviewDown,
    PreviewUp,
    ProductionUp,
    StagingUp,
)

# Intents of one environment run one at a time in the server; this covers a CLI run in between.
LOCK_WAIT = 600.0


class EnvironmentExecutor:
    def __init__(self, site: Site, state: StateDir, lock_wait: float = LOCK_WAIT) -> None:
        self.site = site
        self.state = state
        self.lock_wait = lock_wait

    def __repr__(self) -> str:
        return f"EnvironmentExecutor(site={self.site.name!r})"

    @property
    def builds(self) -> bool:
        return self.site.environments.build is not None

    def queued(self, intent: Intent) -> None:
        """Called as the intent is queued: the newest commit of an environment wins."""
        if not self.builds:
            return
        app = self.site.environments.app
        if isinstance(intent, PreviewUp):
            building.note_request(self.state, names.preview(intent.pr, app).name, intent.ref_sha)
        elif isinstance(intent, StagingUp):
            building.note_request(self.state, names.staging(app).name, intent.sha)
        elif isinstance(intent, ProductionUp):
            building.note_request(self.state, names.production(app).name, intent.sha)

    def execute(self, intent: Intent) -> ExecutionResult:
        try:
            return self._execute(intent)
        except BuildSuperseded as exc:
            return ExecutionResult(None, False, str(exc), summary="superseded by a newer commit")
        except (BuildFailed, FetchError) as exc:
            return ExecutionResult(None, False, str(exc), summary="build or tests failed")

    def _deploy(
        self,
        ctx: operations.EnvContext,
        env: names.Environment,
        sha: str,
        clone_url: str,
        *,
        is_fork: bool = False,
        repo: str = "",
    ) -> tuple[str, str]:
        """(URL, image) of `env` at commit `sha`: built here first when the site builds."""
        if not self.builds:
            image = names.image_for(self.site.environments.image, ctx.app, sha)
            return operations.up(ctx, env, sha, image, is_fork=is_fork, repo=repo), image
        if not clone_url:
            raise UsageError("the event names no clone URL to build from")
        url = building.build_and_up(ctx, env, sha, clone_url, is_fork=is_fork, repo=repo)
        return url, building.built_image(ctx, sha)

    def _execute(self, intent: Intent) -> ExecutionResult:
        if isinstance(intent, Ignored):
            return ExecutionResult(url=None, ok=True, detail=intent.reason)
        reporter = Reporter(quiet=True)
        app = self.site.environments.app
        with operations.open_envs(self.site, self.state, reporter, self.lock_wait) as ctx:
            if isinstance(intent, PreviewUp):
                env = names.preview(intent.pr, app)
                url, image = self._deploy(
                    ctx,
                    env,
                    intent.ref_sha,
                    intent.clone_url,
                    is_fork=intent.is_fork,
                    repo="" if intent.is_fork else intent.head_repo,
                )
                return ExecutionResult(url, True, f"{env.name} runs {image}")
            if isinstance(intent, PreviewDown):
                env = names.preview(intent.pr, app)
                records.mark_closed(self.state, intent.pr, intent.merged)
                removed = operations.down(ctx, env)
                detail = f"removed {env.name}" if removed else f"{env.name} did not exist"
                return ExecutionResult(None, True, detail)
            if isinstance(intent, StagingUp):
                env = names.staging(app)
                url, image = self._deploy(ctx, env, intent.sha, intent.clone_url)
                return ExecutionResult(url, True, f"{env.name} runs {image}")
            env = names.production(app)
            assert isinstance(intent, ProductionUp)
            if self.builds and intent.clone_url:  # staging's image when it runs the commit
                url = building.build_and_up(
                    ctx, env, intent.sha, intent.clone_url, commits=intent.commits
                )
                return ExecutionResult(url, True, f"{env.name} runs {ctx.platform.image_of(env)}")
            image = operations.production_image(ctx, intent.sha, intent.commits)
            url = operations.up(ctx, env, intent.sha, image)
            return ExecutionResult(url, True, f"{env.name} runs {image}")


def make_executor(site: Site, state: StateDir) -> IntentExecutor:
    """The IntentExecutor for `site`; intents from fork PRs never receive app secrets."""
    return EnvironmentExecutor(site, state)
