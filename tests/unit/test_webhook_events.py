"""GitHub deliveries map to the right intents; signatures verify only when they should."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cidemo_infra.webhook.events import (
    DeliverySettings,
    Ignored,
    PayloadError,
    PreviewDown,
    PreviewUp,
    ProductionUp,
    StagingUp,
    map_event,
    ordering_key,
    repository_of,
)
from cidemo_infra.webhook.signature import is_valid_signature, sign
from tests.conftest import REPO

pytestmark = pytest.mark.unit

DATA = REPO / "tests" / "data" / "github"
SETTINGS = DeliverySettings()
HEAD = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
HEAD2 = "a3b5c7d9e1f20314253647586970a1b2c3d4e5f6"
OWN = "https://github.com/paulczar/ci-demo.git"
FORK = "https://github.com/octocat/ci-demo.git"


def payload(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


def event_of(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pull_request.opened", [PreviewUp(11, HEAD, "paulczar/ci-demo", False, OWN)]),
        ("pull_request.synchronize", [PreviewUp(11, HEAD2, "paulczar/ci-demo", False, OWN)]),
        ("pull_request.reopened", [PreviewUp(11, HEAD2, "paulczar/ci-demo", False, OWN)]),
        ("pull_request.closed-merged", [PreviewDown(11, merged=True)]),
        ("pull_request.closed-unmerged", [PreviewDown(12, merged=False)]),
        ("pull_request.labeled-fork", [PreviewUp(14, HEAD, "octocat/ci-demo", True, FORK)]),
        ("push.development", [StagingUp("e5bd3914e2e596debea16f433f57875b5b90bcd6", OWN)]),
        (
            "push.master",
            [
                ProductionUp(
                    "9049f1265b7d61be4a8904a9a27120d2064dab3b",
                    (
                        "e5bd3914e2e596debea16f433f57875b5b90bcd6",
                        "9049f1265b7d61be4a8904a9a27120d2064dab3b",
                    ),
                    OWN,
                )
            ],
        ),
        ("ping", []),
    ],
)
def test_fixture_maps_to(name: str, expected: list[object]) -> None:
    assert map_event(event_of(name), payload(name), SETTINGS) == expected


@pytest.mark.parametrize(
    ("name", "reason_part"),
    [
        ("pull_request.opened-to-master", "targets 'master'"),
        ("pull_request.opened-fork", "label 'safe-to-deploy'"),
        ("push.delete", "deleted refs/heads/add-s3-storage"),
        ("issues.opened", "event 'issues' is not handled"),
    ],
)
def test_fixture_is_ignored_with_reason(name: str, reason_part: str) -> None:
    intents = map_event(event_of(name), payload(name), SETTINGS)
    assert len(intents) == 1
    assert isinstance(intents[0], Ignored)
    assert reason_part in intents[0].reason


@pytest.mark.parametrize("action", ["synchronize", "opened", "reopened"])
def test_a_labeled_forks_new_commits_wait_for_a_fresh_label(action: str) -> None:
    """The label approves the commit a maintainer looked at, not whatever the fork pushes next."""
    data = payload("pull_request.opened-fork")
    data["action"] = action
    data["pull_request"]["labels"] = [{"name": "safe-to-deploy"}]
    (intent,) = map_event("pull_request", data, SETTINGS)
    assert isinstance(intent, Ignored)
    assert "adds the label 'safe-to-deploy' again" in intent.reason
    assert HEAD[:12] in intent.reason


def test_fork_by_collaborator_still_needs_the_label() -> None:
    data = payload("pull_request.opened-fork")
    data["pull_request"]["author_association"] = "COLLABORATOR"
    (intent,) = map_event("pull_request", data, SETTINGS)
    assert isinstance(intent, Ignored)


def test_configured_fork_label_is_the_one_that_counts() -> None:
    data = payload("pull_request.labeled-fork")
    settings = DeliverySettings(fork_label="ok-to-preview")
    (intent,) = map_event("pull_request", data, settings)
    assert isinstance(intent, Ignored)
    data["label"]["name"] = "ok-to-preview"
    assert map_event("pull_request", data, settings) == [
        PreviewUp(14, HEAD, "octocat/ci-demo", True, FORK)
    ]


def test_other_label_on_fork_changes_nothing() -> None:
    data = payload("pull_request.labeled-fork")
    data["label"]["name"] = "bug"
    (intent,) = map_event("pull_request", data, SETTINGS)
    assert isinstance(intent, Ignored) and "'bug'" in intent.reason


def test_safe_label_on_same_repo_pr_is_not_a_redeploy() -> None:
    data = payload("pull_request.opened")
    data["action"] = "labeled"
    data["label"] = {"name": "safe-to-deploy"}
    (intent,) = map_event("pull_request", data, SETTINGS)
    assert isinstance(intent, Ignored)


@pytest.mark.parametrize("association", ["CONTRIBUTOR", "FIRST_TIME_CONTRIBUTOR", "NONE"])
def test_untrusted_author_is_ignored(association: str) -> None:
    data = payload("pull_request.opened")
    data["pull_request"]["author_association"] = association
    (intent,) = map_event("pull_request", data, SETTINGS)
    assert isinstance(intent, Ignored)
    assert "tompscanlan" in intent.reason and "not authorized" in intent.reason


def test_allow_listed_login_is_trusted() -> None:
    data = payload("pull_request.opened")
    data["pull_request"]["author_association"] = "CONTRIBUTOR"
    settings = DeliverySettings(authorized_logins=("tompscanlan",))
    assert map_event("pull_request", data, settings) == [
        PreviewUp(11, HEAD, "paulczar/ci-demo", False, OWN)
    ]


@pytest.mark.parametrize("association", ["OWNER", "MEMBER", "COLLABORATOR"])
def test_trusted_associations(association: str) -> None:
    data = payload("pull_request.opened")
    data["pull_request"]["author_association"] = association
    (intent,) = map_event("pull_request", data, SETTINGS)
    assert isinstance(intent, PreviewUp)


def test_closed_tears_down_even_for_untrusted_or_fork() -> None:
    data = payload("pull_request.opened-fork")
    data["action"] = "closed"
    data["pull_request"]["merged"] = False
    assert map_event("pull_request", data, SETTINGS) == [PreviewDown(14, merged=False)]


def test_deleted_fork_cannot_deploy() -> None:
    data = payload("pull_request.labeled-fork")
    data["pull_request"]["head"]["repo"] = None
    (intent,) = map_event("pull_request", data, SETTINGS)
    assert isinstance(intent, Ignored) and "deleted" in intent.reason


@pytest.mark.parametrize("action", ["edited", "assigned", "review_requested", "unlabeled"])
def test_other_pull_request_actions_are_ignored(action: str) -> None:
    data = payload("pull_request.opened")
    data["action"] = action
    (intent,) = map_event("pull_request", data, SETTINGS)
    assert isinstance(intent, Ignored) and action in intent.reason


def test_branches_come_from_settings() -> None:
    settings = DeliverySettings(staging_branch="develop", production_branch="main")
    push = payload("push.development")
    push["ref"] = "refs/heads/main"
    (intent,) = map_event("push", push, settings)
    assert isinstance(intent, ProductionUp)
    (intent,) = map_event("pull_request", payload("pull_request.opened"), settings)
    assert isinstance(intent, Ignored) and "'develop'" in intent.reason


def test_push_to_other_branch_or_tag_is_ignored() -> None:
    for ref in ("refs/heads/feature-x", "refs/tags/v1.0.0"):
        data = payload("push.development")
        data["ref"] = ref
        (intent,) = map_event("push", data, SETTINGS)
        assert isinstance(intent, Ignored) and ref in intent.reason


def test_zero_after_without_deleted_flag_is_still_a_delete() -> None:
    data = payload("push.delete")
    data["deleted"] = False
    data["ref"] = "refs/heads/development"
    (intent,) = map_event("push", data, SETTINGS)
    assert isinstance(intent, Ignored)


def _without(data: dict[str, Any], path: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    del node[last]
    return data


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("pull_request.opened", "pull_request.number"),
        ("pull_request.opened", "action"),
        ("pull_request.opened", "pull_request.base.ref"),
        ("pull_request.opened", "pull_request.head.sha"),
        ("pull_request.opened", "pull_request.author_association"),
        ("pull_request.opened", "repository"),
        ("pull_request.closed-merged", "pull_request.merged"),
        ("pull_request.labeled-fork", "label"),
        ("push.development", "after"),
        ("push.development", "ref"),
        ("push.master", "repository"),
    ],
)
def test_missing_required_field_names_it(name: str, path: str) -> None:
    with pytest.raises(PayloadError) as err:
        map_event(event_of(name), _without(payload(name), path), SETTINGS)
    assert str(err.value).startswith(path.split(".")[0])
    assert "missing" in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["pull_request"].update(number="11"), "pull_request.number: expected int"),
        (lambda d: d["pull_request"].update(number=True), "pull_request.number: expected int"),
        (lambda d: d["pull_request"].update(number=0), "not a pull request number"),
        (lambda d: d["pull_request"]["head"].update(sha="HEAD~1"), "is not a commit id"),
        (lambda d: d["pull_request"].update(labels=[{"id": 1}]), "labels[0].name"),
        (lambda d: d["repository"].update(full_name="no-slash"), "is not owner/name"),
    ],
)
def test_wrong_field_types_are_payload_errors(mutate: Any, message: str) -> None:
    data = payload("pull_request.opened")
    mutate(data)
    with pytest.raises(PayloadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        map_event("pull_request", data, SETTINGS)


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_non_object_payload_is_refused(body: Any) -> None:
    with pytest.raises(PayloadError, match="expected a JSON object"):
        map_event("push", body, SETTINGS)


def test_ordering_keys_group_a_pull_request() -> None:
    up = PreviewUp(11, HEAD, "paulczar/ci-demo", False, OWN)
    assert ordering_key(up) == ordering_key(PreviewDown(11, True)) == "pr-11"
    assert ordering_key(PreviewDown(12, True)) != "pr-11"
    assert ordering_key(StagingUp(HEAD)) == "staging"
    assert ordering_key(ProductionUp(HEAD)) == "production"


def test_repository_of_fixture() -> None:
    assert repository_of(payload("push.master")) == "paulczar/ci-demo"


SECRET = "It's a Secret to Everybody"
BODY = b"Hello, World!"
# The example from GitHub's "Validating webhook deliveries" documentation.
DOC_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_signature_matches_githubs_documented_example() -> None:
    assert sign(SECRET, BODY) == DOC_SIGNATURE
    assert is_valid_signature(SECRET, BODY, DOC_SIGNATURE)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        DOC_SIGNATURE.upper(),
        DOC_SIGNATURE.replace("sha256=", "sha1="),
        DOC_SIGNATURE.replace("sha256=", "sha512="),
        DOC_SIGNATURE[len("sha256=") :],
        DOC_SIGNATURE + "00",
        DOC_SIGNATURE[:-1] + "0",
        DOC_SIGNATURE[:-2] + "zz",
        " " + DOC_SIGNATURE,
    ],
)
def test_malformed_or_wrong_signature_is_invalid(header: str | None) -> None:
    assert not is_valid_signature(SECRET, BODY, header)


def test_signature_binds_body_and_secret() -> None:
    assert not is_valid_signature(SECRET, BODY + b" ", DOC_SIGNATURE)
    assert not is_valid_signature("another secret", BODY, DOC_SIGNATURE)
    assert not is_valid_signature("", BODY, sign("", BODY))


@pytest.mark.parametrize(
    "commits",
    [[{"id": "not-a-sha"}], [{"message": "no id"}], ["e5bd3914e2e596debea16f433f57875b5b90bcd6"]],
)
def test_a_push_with_a_malformed_commit_list_is_refused(commits: list[object]) -> None:
    data = payload("push.master")
    data["commits"] = commits
    with pytest.raises(PayloadError, match=r"commits\[0\]\.id"):
        map_event("push", data, SETTINGS)


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("push.master", "push"),
        ("push.development", "push"),
        ("pull_request.opened", "pull_request"),
        ("pull_request.closed-merged", "pull_request"),
        ("pull_request.labeled-fork", "pull_request"),
    ],
)
def test_events_of_another_repository_are_ignored_with_the_reason(name: str, event: str) -> None:
    bound = DeliverySettings(repository="paulczar/ci-demo")
    assert map_event(event, payload(name), bound) != [] and all(
        not isinstance(i, Ignored) for i in map_event(event, payload(name), bound)
    )
    other = payload(name)
    other["repository"]["full_name"] = "octocat/other-app"
    assert map_event(event, other, bound) == [
        Ignored(
            "repository octocat/other-app is not this site's (paulczar/ci-demo); "
            "its events change nothing here"
        )
    ]


def test_repository_names_compare_without_case() -> None:
    bound = DeliverySettings(repository="PaulCzar/CI-Demo")
    assert isinstance(map_event("push", payload("push.master"), bound)[0], ProductionUp)


def test_clone_url_that_is_not_text_is_a_bad_payload() -> None:
    data = payload("push.development")
    data["repository"]["clone_url"] = {"x": 1}
    with pytest.raises(PayloadError, match=r"repository\.clone_url"):
        map_event("push", data, SETTINGS)
