"""Whether a pull request is closed, asked of GitHub's REST API (`env gc`).

Uses the token of the webhook's commit statuses (`CIDEMO_GITHUB_TOKEN`, and `CIDEMO_GITHUB_API`
for GitHub Enterprise); without a token nothing is asked. The token is never logged or put in an
error. Every request has connect and read timeouts; an unanswered question is "unknown" (None).
"""

from __future__ import annotations

import json
import logging
import os
import re

import urllib3

TOKEN_ENV = "CIDEMO_GITHUB_TOKEN"
API_ENV = "CIDEMO_GITHUB_API"
REPO_ENV = "CIDEMO_GITHUB_REPO"
DEFAULT_API = "https://api.github.com"
_FULL_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

log = logging.getLogger("cidemo.envs.github")


def valid_repo(repo: str) -> bool:
    """`owner/name`, as GitHub spells a repository's full name."""
    return bool(_FULL_NAME.match(repo))


class PullRequests:
    def __init__(self, token: str, api_url: str = DEFAULT_API) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=15.0),
            retries=urllib3.util.retry.Retry(
                total=2, backoff_factor=0.5, status_forcelist=(502, 503, 504)
            ),
        )

    @classmethod
    def from_env(cls) -> PullRequests | None:
        token = os.environ.get(TOKEN_ENV, "")
        return cls(token, os.environ.get(API_ENV) or DEFAULT_API) if token else None

    def __repr__(self) -> str:
        return f"PullRequests(api_url={self.api_url!r})"

    def is_closed(self, repo: str, number: int) -> bool | None:
        """True/False from `GET /repos/{repo}/pulls/{number}`; None when GitHub did not say."""
        if not _FULL_NAME.match(repo):
            return None
        try:
            response = self._http.request(
                "GET",
                f"{self.api_url}/repos/{repo}/pulls/{int(number)}",
                headers={
                    "Accept": "application/vnd.github+json",
                    "Authorization": f"Bearer {self._token}",
                    "User-Agent": "cidemo-infra",
                    "X-GitHub-Api-Version": "2022-11-28",
                },
            )
        except urllib3.exceptions.HTTPError as exc:
            log.warning(
                "pull request %s#%d: GitHub unreachable (%s)", repo, number, type(exc).__name__
            )
            return None
        if response.status != 200:
            log.warning(
                "pull request %s#%d: GitHub answered HTTP %d", repo, number, response.status
            )
            return None
        try:
            state = json.loads(response.data).get("state")
        except (ValueError, AttributeError):
            return None
        return state == "closed" if state in ("open", "closed") else None
