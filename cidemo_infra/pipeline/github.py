"""Questions for GitHub's REST API: is a pull request closed (`env gc`), may a login write to
a repository (the webhook's label approvals and forced pushes).

Uses the token of the webhook's commit statuses (`CIDEMO_GITHUB_TOKEN`, and `CIDEMO_GITHUB_API`
for GitHub Enterprise); without a token nothing is asked. The token is never logged or put in an
error, and never sent in clear: an `http://` API is refused unless it is on this machine.
Every request has connect and read timeouts; an unanswered question is "unknown" (None).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import urllib.parse
from typing import Any

import urllib3

from cidemo_infra.errors import UsageError

TOKEN_ENV = "CIDEMO_GITHUB_TOKEN"
API_ENV = "CIDEMO_GITHUB_API"
REPO_ENV = "CIDEMO_GITHUB_REPO"
DEFAULT_API = "https://api.github.com"
_FULL_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_LOGIN = re.compile(r"^[A-Za-z0-9-]{1,39}(\[bot\])?$")
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})

log = logging.getLogger("cidemo.envs.github")


def valid_repo(repo: str) -> bool:
    """`owner/name`, as GitHub spells a repository's full name."""
    return bool(_FULL_NAME.match(repo))


class ApiUrlError(UsageError):
    """`CIDEMO_GITHUB_API` would carry the token in clear, or is not a URL (exit 2)."""


def checked_api_url(url: str) -> str:
    """`url` without its trailing slash: https://, or http:// only to a loopback host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ApiUrlError(f"{API_ENV} '{url}': expected https://HOST[/PATH]")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ApiUrlError(
            f"{API_ENV} '{url}': http:// would send the GitHub token in clear; use https:// "
            "(http:// is accepted only for localhost and loopback addresses)"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _headers(token: str) -> dict[str, str]:
    return {
        "Accept": "application/vnd.github+json",
        "Authorization": f"Bearer {token}",
        "User-Agent": "cidemo-infra",
        "X-GitHub-Api-Version": "2022-11-28",
    }


def _get_json(
    http: urllib3.PoolManager, url: str, token: str, what: str
) -> tuple[int, dict[str, Any] | None] | None:
    """`GET url` with the token: (HTTP status, the JSON object or None when the body is not
    one); None, logged as `<what>: GitHub unreachable`, when no answer came."""
    try:
        response = http.request("GET", url, headers=_headers(token))
    except urllib3.exceptions.HTTPError as exc:
        log.warning("%s: GitHub unreachable (%s)", what, type(exc).__name__)
        return None
    try:
        body = json.loads(response.data)
    except ValueError:
        body = None
    return response.status, body if isinstance(body, dict) else None


class PullRequests:
    def __init__(self, token: str, api_url: str = DEFAULT_API) -> None:
        self.api_url = checked_api_url(api_url)
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
        if not valid_repo(repo):
            return None
        what = f"pull request {repo}#{int(number)}"
        url = f"{self.api_url}/repos/{repo}/pulls/{int(number)}"
        answer = _get_json(self._http, url, self._token, what)
        if answer is None:
            return None
        status, body = answer
        if status != 200:
            log.warning("%s: GitHub answered HTTP %d", what, status)
            return None
        if body is None:
            return None
        state = body.get("state")
        return state == "closed" if state in ("open", "closed") else None


class Collaborators:
    """Whether a login may write to a repository: `GET /repos/{repo}/collaborators/{login}/
    permission` answers admin, maintain or write (write access), or read, triage, none."""

    def __init__(
        self,
        token: str,
        api_url: str = DEFAULT_API,
        connect_timeout: float = 3.0,
        read_timeout: float = 5.0,
    ) -> None:
        self.api_url = checked_api_url(api_url)
        self._token = token
        # asked while a delivery waits for its answer: one retry, bounded well under GitHub's 10 s
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.util.retry.Retry(total=1, backoff_factor=0.2, status_forcelist=()),
        )

    @classmethod
    def from_env(cls) -> Collaborators | None:
        token = os.environ.get(TOKEN_ENV, "")
        return cls(token, os.environ.get(API_ENV) or DEFAULT_API) if token else None

    def __repr__(self) -> str:
        return f"Collaborators(api_url={self.api_url!r})"

    def has_write_access(self, repo: str, login: str) -> bool | None:
        """True/False from GitHub; None when GitHub did not say (unreachable, refused, odd)."""
        if not valid_repo(repo) or not _LOGIN.match(login):
            return False
        what = f"write access of {login} to {repo}"
        url = f"{self.api_url}/repos/{repo}/collaborators/{login}/permission"
        answer = _get_json(self._http, url, self._token, what)
        if answer is None:
            return None
        status, body = answer
        if status == 404:
            return False  # not a collaborator (GitHub answers 404 for unknown users too)
        if status != 200:
            log.warning("%s: GitHub answered HTTP %d", what, status)
            return None
        if body is None:
            return None
        permission = body.get("permission")
        return permission in WRITE_PERMISSIONS
