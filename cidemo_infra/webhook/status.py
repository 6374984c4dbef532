"""Commit statuses on GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`.

The token comes from `CIDEMO_GITHUB_TOKEN` and is sent as `Authorization: Bearer`; it is never
logged and never part of an error message. 5xx answers and connection failures are retried a
bounded number of times with exponential backoff; every request has connect and read timeouts.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Literal

import urllib3
from urllib3.util.retry import Retry

from cidemo_infra.errors import CidemoError
from cidemo_infra.pipeline.github import ApiUrlError, checked_api_url

DEFAULT_API = "https://api.github.com"
TOKEN_ENV = "CIDEMO_GITHUB_TOKEN"
API_ENV = "CIDEMO_GITHUB_API"
PREVIEW_CONTEXT = "cidemo/preview"
DESCRIPTION_MAX = 140  # GitHub rejects longer descriptions
State = Literal["pending", "success", "failure", "error"]
STATES: tuple[str, ...] = ("pending", "success", "failure", "error")

_FULL_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")

log = logging.getLogger("cidemo.webhook.status")


class StatusError(CidemoError):
    """GitHub refused or never answered a commit status; names repo, commit and HTTP status."""


@dataclass(frozen=True)
class CommitStatus:
    repo: str
    sha: str
    state: State
    description: str
    target_url: str | None = None
    context: str = PREVIEW_CONTEXT

    def body(self) -> dict[str, str]:
        data = {
            "state": self.state,
            "description": self.description[:DESCRIPTION_MAX],
            "context": self.context,
        }
        if self.target_url:
            data["target_url"] = self.target_url
        return data


class CommitStatusClient:
    """Posts commit statuses; one pooled connection manager, bounded retries, hard timeouts."""

    def __init__(
        self,
        token: str,
        api_url: str = DEFAULT_API,
        retries: int = 3,
        backoff: float = 0.5,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
    ) -> None:
        if not token:
            raise StatusError(f"no GitHub token: set {TOKEN_ENV} to post commit statuses")
        try:
            self.api_url = checked_api_url(api_url)
        except ApiUrlError as exc:
            raise StatusError(str(exc)) from None
        self._token = token
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=Retry(
                total=retries,
                backoff_factor=backoff,
                status_forcelist=(500, 502, 503, 504),
                allowed_methods=frozenset({"POST"}),
                raise_on_status=False,
                respect_retry_after_header=True,
            ),
        )

    @classmethod
    def from_env(cls) -> CommitStatusClient | None:
        """A client when `CIDEMO_GITHUB_TOKEN` is set, else None (statuses are then skipped)."""
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            return None
        return cls(token, os.environ.get(API_ENV) or DEFAULT_API)

    def __repr__(self) -> str:
        return f"CommitStatusClient(api_url={self.api_url!r})"

    def post(self, status: CommitStatus) -> None:
        if not _FULL_NAME.match(status.repo):
            raise StatusError(f"repository '{status.repo}' is not owner/name")
        if not _SHA.match(status.sha):
            raise StatusError(f"'{status.sha[:80]}' is not a commit id")
        if status.state not in STATES:
            raise StatusError(f"state '{status.state}' is not one of {', '.join(STATES)}")
        url = f"{self.api_url}/repos/{status.repo}/statuses/{status.sha}"
        where = f"{status.repo}@{status.sha[:12]}"
        try:
            response = self._http.request(
                "POST",
                url,
                body=json.dumps(status.body()).encode(),
                headers={
                    "Accept": "application/vnd.github+json",
                    "Authorization": f"Bearer {self._token}",
                    "Content-Type": "application/json",
                    "User-Agent": "cidemo-infra",
                    "X-GitHub-Api-Version": "2022-11-28",
                },
            )
        except urllib3.exceptions.HTTPError as exc:
            raise StatusError(
                f"commit status for {where} not posted: {type(exc).__name__}"
            ) from None
        if response.status != 201:
            raise StatusError(
                f"commit status for {where} refused: HTTP {response.status} "
                f"{_message(response.data)}".rstrip()
            )
        log.info("status %s %s on %s", status.context, status.state, where)


def _message(data: bytes) -> str:
    try:
        message = json.loads(data).get("message", "")
    except (ValueError, AttributeError):
        return ""
    return str(message)[:200]
