"""Fetch exactly one commit of a repository: a shallow fetch by SHA into an empty directory.

A token for private repositories reaches git as an `http.extraHeader` in git's own
configuration variables (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`) of the
git process: never an argument, never in the URL, never in the log. Clone URLs that come from a
webhook's payload must be `https://`, or `http://`/`git://` to a loopback address (tests serve
a repository with `git daemon`); the operator's own (`env up --build --source`) may also be a
local path or `file://`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import IO

from cidemo_infra.errors import CidemoError, UsageError

FETCH_TIMEOUT = 300


class FetchError(CidemoError):
    """The commit could not be fetched (the message names the repository, never a token)."""


def check_clone_url(url: str, *, from_event: bool) -> str:
    """`url` if a build may fetch from it; UsageError naming what is allowed otherwise."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.username or parsed.password:
        raise UsageError("clone URL: credentials do not belong in the URL (use secrets/git_token)")
    if parsed.scheme == "https" and parsed.hostname:
        return url
    if parsed.scheme in ("http", "git") and parsed.hostname and _is_loopback(parsed.hostname):
        return url
    if not from_event and (parsed.scheme == "file" or (not parsed.scheme and url.startswith("/"))):
        return url
    allowed = "https://, or http:// and git:// on loopback"
    if not from_event:
        allowed += ", or a local path / file://"
    raise UsageError(f"clone URL '{_redact(url)[:200]}': not allowed; use {allowed}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.password or parsed.username:
        netloc = parsed.hostname or ""
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return url


def git_env(token: str | None) -> dict[str, str]:
    """The environment of a git process: no prompts, no user config, the token as a header."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "LC_ALL": "C",
    }
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env |= {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }
    return env


def fetch_commit(url: str, sha: str, dest: Path, log: IO[str], token: str | None = None) -> Path:
    """The tree of commit `sha` of `url` in `dest` (created empty; no `.git` left in it)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    env = git_env(token)
    where = _redact(url)
    steps = [
        ["git", "init", "-q", str(dest)],
        ["git", "-C", str(dest), "fetch", "-q", "--depth", "1", "--no-tags", url, sha],
        ["git", "-C", str(dest), "-c", "advice.detachedHead=false", "checkout", "-q", sha],
    ]
    log.write(f"fetch {sha} from {where}\n")
    for cmd in steps:
        try:
            result = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=FETCH_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise FetchError(
                f"fetching {sha[:12]} from {where}: no answer in {FETCH_TIMEOUT} s"
            ) from None
        output = (result.stdout + result.stderr).replace(token or "\0", "***")
        if output.strip():
            log.write(output if output.endswith("\n") else output + "\n")
        if result.returncode != 0:
            last = output.strip().splitlines()[-1:] or ["no output"]
            raise FetchError(f"fetching {sha[:12]} from {where} failed: {last[0][:200]}")
    shutil.rmtree(dest / ".git")
    return dest
