"""The executor `cidemo webhook serve` uses; owned by the envs package (not wired yet)."""

from __future__ import annotations

from typing import Any

from cidemo_infra.state import StateDir
from cidemo_infra.webhook.events import ExecutionResult, Intent, IntentExecutor


class UnwiredExecutor:
    """Placeholder until environments are wired: every intent fails, loudly and on purpose."""

    def __init__(self, site: Any, state: StateDir) -> None:
        self.site = site
        self.state = state

    def execute(self, intent: Intent) -> ExecutionResult:
        raise NotImplementedError("environments are wired by the envs package")


def make_executor(site: Any, state: StateDir) -> IntentExecutor:
    """The IntentExecutor for `site`; intents from fork PRs must never receive app secrets."""
    return UnwiredExecutor(site, state)
