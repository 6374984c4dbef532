"""Map a GitHub webhook (event name, parsed payload) to what should happen, as data.

Pure: no I/O, no clock. The server verifies the signature before anything here sees the payload;
this module decides which environment changes a delivery asks for and refuses payloads that lack
the fields it needs. Who may deploy a preview:

- a pull request into the staging branch from the repository itself, by an author whose
  `author_association` is OWNER, MEMBER or COLLABORATOR, or whose login is allow-listed;
- a pull request from a fork only when a maintainer adds the label (the `labeled` event), at the
  commit the pull request has then, and marked `is_fork=True` so the executor never hands it the
  site's app secrets. Later pushes to the fork do not deploy, even while the label stays: a
  maintainer who has looked at the new commits removes and adds the label again. Whether the
  label's sender may write to the repository is asked of GitHub by the server (`admission`).

Only events of the site's repository (`environments.repository`) change anything: those of
another repository (an organisation-wide hook) are ignored with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cidemo_infra.errors import EXIT_USAGE, CidemoError

ZERO_SHA = "0" * 40
TRUSTED_ASSOCIATIONS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
PREVIEW_ACTIONS = frozenset({"opened", "reopened", "synchronize"})
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_FULL_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_LOGIN = re.compile(r"^[A-Za-z0-9-]{1,39}(\[bot\])?$")


class PayloadError(CidemoError):
    """A delivery that is not the JSON GitHub documents: names the field (HTTP 400)."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class DeliverySettings:
    staging_branch: str = "development"
    production_branch: str = "master"
    authorized_logins: tuple[str, ...] = ()
    fork_label: str = "safe-to-deploy"
    app: str = "ghost"
    # owner/name; empty: no binding (`cidemo webhook serve` refuses to start without one)
    repository: str = ""


@dataclass(frozen=True)
class PreviewUp:
    pr: int
    ref_sha: str
    head_repo: str
    is_fork: bool
    clone_url: str = ""  # the head repository's (a fork's own): where a build fetches from


@dataclass(frozen=True)
class PreviewDown:
    pr: int
    merged: bool


@dataclass(frozen=True)
class StagingUp:
    sha: str
    clone_url: str = ""


@dataclass(frozen=True)
class ProductionUp:
    sha: str
    # the push's commits (payload `commits[].id`): a merge of the staging branch brings staging's
    # commit in here while `sha` is the merge commit
    commits: tuple[str, ...] = ()
    clone_url: str = ""


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class Refused:
    """An intent the delivery asked for and may not have (a replay, a label without write
    access): changes nothing, like `Ignored`, but is recorded and logged as a warning."""

    reason: str


Intent = PreviewUp | PreviewDown | StagingUp | ProductionUp | Ignored | Refused


@dataclass(frozen=True)
class ExecutionResult:
    url: str | None
    ok: bool
    detail: str  # for the server's log only: may name internal hosts
    summary: str | None = None  # a failure's generic kind, safe for a public commit status


class IntentExecutor(Protocol):
    """Carries out one intent (never `Ignored`) and says where it can be seen.

    Called from the webhook server's worker threads: intents of different pull requests may run
    at the same time, those of one pull request (or of staging, or of production) never do.
    A `PreviewUp` with `is_fork=True` must get no app secrets. Exceptions count as failures.
    """

    def execute(self, intent: Intent) -> ExecutionResult: ...


def ordering_key(intent: Intent) -> str:
    """Intents with the same key run one at a time, in arrival order (a PR's close waits)."""
    if isinstance(intent, PreviewUp | PreviewDown):
        return f"pr-{intent.pr}"
    if isinstance(intent, StagingUp):
        return "staging"
    if isinstance(intent, ProductionUp):
        return "production"
    return "ignored"


def commit_of(intent: Intent) -> str | None:
    """The commit a status can be posted on, if the intent deploys one."""
    if isinstance(intent, PreviewUp):
        return intent.ref_sha
    if isinstance(intent, StagingUp | ProductionUp):
        return intent.sha
    return None


def is_actionable(intent: Intent) -> bool:
    return not isinstance(intent, Ignored | Refused)


def map_event(event: str, payload: Any, settings: DeliverySettings) -> list[Intent]:
    """The intents of one delivery; `[]` for `ping`. Raises PayloadError on a malformed payload."""
    if not isinstance(payload, dict):
        raise PayloadError(f"payload: expected a JSON object, got {_kind(payload)}")
    if event == "ping":
        return []
    if event in ("pull_request", "push") and settings.repository:
        repo = repository_of(payload)
        if repo.lower() != settings.repository.lower():
            return [
                Ignored(
                    f"repository {repo} is not this site's ({settings.repository}); "
                    "its events change nothing here"
                )
            ]
    if event == "pull_request":
        return [_pull_request(payload, settings)]
    if event == "push":
        return [_push(payload, settings)]
    return [Ignored(f"event '{event}' is not handled")]


def repository_of(payload: Any) -> str:
    """`repository.full_name` (owner/name) of a delivery, where commit statuses are posted."""
    if not isinstance(payload, dict):
        raise PayloadError(f"payload: expected a JSON object, got {_kind(payload)}")
    name = _field(payload, "repository.full_name", str)
    if not _FULL_NAME.match(name):
        raise PayloadError(f"repository.full_name: '{name}' is not owner/name")
    return name


def sender_of(payload: Mapping[str, Any]) -> str:
    """`sender.login`: who labelled or pushed."""
    login = _field(payload, "sender.login", str)
    if not _LOGIN.match(login):
        raise PayloadError(f"sender.login: '{login[:80]}' is not a GitHub login")
    return login


def is_forced(payload: Mapping[str, Any]) -> bool:
    """A push's `forced`: the branch was moved to a commit that does not descend from its last."""
    return _field(payload, "forced", bool, nullable=True) is True


def branch_of(intent: Intent, settings: DeliverySettings) -> str | None:
    """The branch a push intent deploys from (the replay rule is kept per branch)."""
    if isinstance(intent, StagingUp):
        return settings.staging_branch
    if isinstance(intent, ProductionUp):
        return settings.production_branch
    return None


def _pull_request(payload: Mapping[str, Any], settings: DeliverySettings) -> Intent:
    action = _field(payload, "action", str)
    number = _field(payload, "pull_request.number", int)
    if number < 1:
        raise PayloadError(f"pull_request.number: {number} is not a pull request number")
    if action == "closed":
        return PreviewDown(pr=number, merged=_field(payload, "pull_request.merged", bool))
    if action not in PREVIEW_ACTIONS and action != "labeled":
        return Ignored(f"pull request #{number}: action '{action}' changes no environment")

    base = _field(payload, "pull_request.base.ref", str)
    sha = _field(payload, "pull_request.head.sha", str)
    if not _SHA.match(sha):
        raise PayloadError(f"pull_request.head.sha: '{sha[:80]}' is not a commit id")
    repo = repository_of(payload)
    if base != settings.staging_branch:
        return Ignored(
            f"pull request #{number} targets '{base}'; previews are for '{settings.staging_branch}'"
        )
    head_repo_obj = _field(payload, "pull_request.head.repo", dict, nullable=True)
    if head_repo_obj is None:
        return Ignored(f"pull request #{number}: its head repository was deleted")
    head_repo = _field(payload, "pull_request.head.repo.full_name", str)
    is_fork = head_repo != repo
    labels = _label_names(payload)

    if action == "labeled":
        label = _field(payload, "label.name", str)
        if label != settings.fork_label:
            return Ignored(f"pull request #{number}: label '{label}' changes no environment")
        if not is_fork:
            return Ignored(
                f"pull request #{number}: label '{label}' only matters for pull requests from forks"
            )
        return PreviewUp(
            pr=number,
            ref_sha=sha,
            head_repo=head_repo,
            is_fork=True,
            clone_url=_clone_url(payload, "pull_request.head.repo"),
        )

    if is_fork:
        if settings.fork_label in labels:
            return Ignored(
                f"pull request #{number} is from fork {head_repo}: commit {sha[:12]} is not "
                f"deployed until a maintainer adds the label '{settings.fork_label}' again "
                "(remove it, add it)"
            )
        return Ignored(
            f"pull request #{number} is from fork {head_repo}; it deploys after a "
            f"maintainer adds the label '{settings.fork_label}'"
        )

    association = _field(payload, "pull_request.author_association", str)
    login = _field(payload, "pull_request.user.login", str)
    if association not in TRUSTED_ASSOCIATIONS and login not in settings.authorized_logins:
        return Ignored(
            f"pull request #{number}: author '{login}' ({association}) is not authorized; "
            f"trusted are {', '.join(sorted(TRUSTED_ASSOCIATIONS))} and the allow-list"
        )
    return PreviewUp(
        pr=number,
        ref_sha=sha,
        head_repo=head_repo,
        is_fork=False,
        clone_url=_clone_url(payload, "pull_request.head.repo"),
    )


def _push(payload: Mapping[str, Any], settings: DeliverySettings) -> Intent:
    ref = _field(payload, "ref", str)
    after = _field(payload, "after", str)
    repository_of(payload)
    if payload.get("deleted") is True or after == ZERO_SHA:
        return Ignored(f"push deleted {ref}")
    if not _SHA.match(after):
        raise PayloadError(f"after: '{after[:80]}' is not a commit id")
    if ref == f"refs/heads/{settings.staging_branch}":
        return StagingUp(sha=after, clone_url=_clone_url(payload, "repository"))
    if ref == f"refs/heads/{settings.production_branch}":
        return ProductionUp(
            sha=after, commits=_commit_ids(payload), clone_url=_clone_url(payload, "repository")
        )
    return Ignored(f"push to {ref} deploys nothing")


def _clone_url(payload: Mapping[str, Any], repo_path: str) -> str:
    """`<repo>.clone_url`, where a build fetches the commit ("" when the payload has none; the
    build then refuses, a deploy of a prebuilt image does not need it)."""
    repo = _field(payload, repo_path, dict)
    url = repo.get("clone_url")
    if url is None:
        return ""
    if not isinstance(url, str) or len(url) > 2000 or not url.isprintable():
        raise PayloadError(f"{repo_path}.clone_url: not a URL")
    return url


def _commit_ids(payload: Mapping[str, Any]) -> tuple[str, ...]:
    commits = _field(payload, "commits", list, nullable=True) or []
    ids: list[str] = []
    for i, commit in enumerate(commits):
        cid = commit.get("id") if isinstance(commit, dict) else None
        if not isinstance(cid, str) or not _SHA.match(cid):
            raise PayloadError(f"commits[{i}].id: missing or not a commit id")
        ids.append(cid)
    return tuple(ids)


def _label_names(payload: Mapping[str, Any]) -> frozenset[str]:
    labels = _field(payload, "pull_request.labels", list, nullable=True) or []
    names: set[str] = set()
    for i, label in enumerate(labels):
        name = label.get("name") if isinstance(label, dict) else None
        if not isinstance(name, str):
            raise PayloadError(f"pull_request.labels[{i}].name: missing or not a string")
        names.add(name)
    return frozenset(names)


def _field(payload: Mapping[str, Any], path: str, kind: type, nullable: bool = False) -> Any:
    node: Any = payload
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise PayloadError(f"{'.'.join(walked)}: missing (required for this event)")
        node = node[part]
    if node is None and nullable:
        return None
    # bool is an int in Python; a PR number of `true` is still not a number.
    if not isinstance(node, kind) or (kind is int and isinstance(node, bool)):
        raise PayloadError(f"{path}: expected {kind.__name__}, got {_kind(node)}")
    return node


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)
