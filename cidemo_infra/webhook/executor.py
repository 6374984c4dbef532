"""The executor `cidemo webhook serve` uses: intents become environment actions (envs package).

- `PreviewUp`: the preview of the pull request runs `environments.image` of the head commit;
  a pull request from a fork gets its own database credentials and no app secrets;
- `PreviewDown`: the pull request is marked closed, then its preview is removed (a removal that
  fails is finished by `cidemo env gc`);
- `StagingUp`: staging runs the image of the pushed commit;
- `ProductionUp`: production runs the exact image staging runs when staging runs the pushed
  commit or one the push brought in (a merge of the staging branch), else the image of the commit.
"""

from __future__ import annotations

from cidemo_infra.console import Reporter
from cidemo_infra.envs import names, records
from cidemo_infra.pipeline import operations
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

    def execute(self, intent: Intent) -> ExecutionResult:
        if isinstance(intent, Ignored):
            return ExecutionResult(url=None, ok=True, detail=intent.reason)
        reporter = Reporter(quiet=True)
        app = self.site.environments.app
        template = self.site.environments.image
        with operations.open_envs(self.site, self.state, reporter, self.lock_wait) as ctx:
            if isinstance(intent, PreviewUp):
                env = names.preview(intent.pr, app)
                image = names.image_for(template, app, intent.ref_sha)
                url = operations.up(
                    ctx,
                    env,
                    intent.ref_sha,
                    image,
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
                image = names.image_for(template, app, intent.sha)
                url = operations.up(ctx, env, intent.sha, image)
                return ExecutionResult(url, True, f"{env.name} runs {image}")
            env = names.production(app)
            assert isinstance(intent, ProductionUp)
            image = operations.production_image(ctx, intent.sha, intent.commits)
            url = operations.up(ctx, env, intent.sha, image)
            return ExecutionResult(url, True, f"{env.name} runs {image}")


def make_executor(site: Site, state: StateDir) -> IntentExecutor:
    """The IntentExecutor for `site`; intents from fork PRs never receive app secrets."""
    return EnvironmentExecutor(site, state)
