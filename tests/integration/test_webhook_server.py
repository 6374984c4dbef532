"""The real webhook server (waitress on 127.0.0.1) against signed and unsigned deliveries.

Environments are not touched: intents go to `RecordingExecutor`, and commit statuses and
write-access questions go to `RecordingGitHub` (tests/support/recording_github.py), both test
doubles that only record (the stand-in answers permissions from a table).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cidemo_infra.pipeline.github import Collaborators
from cidemo_infra.webhook.commands import parse_listen, webhook
from cidemo_infra.webhook.events import (
    DeliverySettings,
    ExecutionResult,
    Intent,
    PreviewDown,
    PreviewUp,
    ProductionUp,
    StagingUp,
)
from cidemo_infra.webhook.server import MAX_BODY, WebhookServer
from cidemo_infra.webhook.signature import sign
from cidemo_infra.webhook.status import CommitStatusClient
from tests.conftest import REPO, SITES
from tests.support.recording_github import RecordingGitHub

pytestmark = pytest.mark.integration

DATA = REPO / "tests" / "data" / "github"
SECRET = "test-webhook-secret-0123456789"
TOKEN = "test-github-token-abcdef"
HEAD = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
REPOSITORY = "paulczar/ci-demo"  # the fixtures' repository
MAINTAINER = "paulczar"  # the fixtures' sender of labels and pushes
OWN_CLONE = "https://github.com/paulczar/ci-demo.git"  # the fixtures' clone URLs
FORK_CLONE = "https://github.com/octocat/ci-demo.git"


@dataclass
class Call:
    intent: Intent
    started: float
    ended: float = 0.0


@dataclass
class RecordingExecutor:
    """Test double for the IntentExecutor the envs package provides: records each intent it is
    given, optionally sleeps or fails, and answers a made-up preview URL. It deploys nothing."""

    delays: dict[int, float] = field(default_factory=dict)
    fail_with: Exception | None = None
    ok: bool = True
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def execute(self, intent: Intent) -> ExecutionResult:
        call = Call(intent, time.monotonic())
        with self.lock:
            self.calls.append(call)
        pr = getattr(intent, "pr", None)
        if isinstance(intent, PreviewUp) and pr in self.delays:
            time.sleep(self.delays[pr])
        call.ended = time.monotonic()
        if self.fail_with is not None:
            raise self.fail_with
        url = f"http://pr-{pr}-ghost.cidemo.test" if isinstance(intent, PreviewUp) else None
        return ExecutionResult(url=url, ok=self.ok, detail="recorded" if self.ok else "boom")

    def intents(self) -> list[Intent]:
        with self.lock:
            return [c.intent for c in self.calls]


def fixture_body(name: str) -> bytes:
    return (DATA / f"{name}.json").read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    return json.loads(fixture_body(name))


def signed(
    body: bytes, event: str, delivery: str | None = None, secret: str = SECRET
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret, body),
        "User-Agent": "GitHub-Hookshot/test",
    }


def send(
    server: WebhookServer,
    body: bytes,
    headers: dict[str, str],
    method: str = "POST",
    path: str = "/github",
) -> tuple[int, str]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode().strip()
    finally:
        conn.close()


def deliver(server: WebhookServer, name: str, delivery: str | None = None) -> tuple[int, str]:
    body = fixture_body(name)
    return send(server, body, signed(body, name.split(".", 1)[0], delivery))


@pytest.fixture
def github() -> Iterator[RecordingGitHub]:
    with RecordingGitHub() as recorder:
        recorder.permissions[MAINTAINER] = "admin"
        yield recorder


@pytest.fixture
def executor() -> RecordingExecutor:
    return RecordingExecutor()


def make_server(
    tmp_path: Path, executor: RecordingExecutor, github: RecordingGitHub | None, **kw: Any
) -> WebhookServer:
    statuses = CommitStatusClient(TOKEN, github.url, backoff=0.01) if github else None
    kw.setdefault("access", Collaborators(TOKEN, github.url) if github else None)
    kw.setdefault("settings", DeliverySettings(repository=REPOSITORY))
    return WebhookServer(
        SECRET,
        executor,
        tmp_path / "state" / "webhook" / "deliveries.sqlite3",
        statuses=statuses,
        **kw,
    ).start()


@pytest.fixture
def server(
    tmp_path: Path, executor: RecordingExecutor, github: RecordingGitHub
) -> Iterator[WebhookServer]:
    srv = make_server(tmp_path, executor, github, workers=4)
    yield srv
    srv.stop(drain_timeout=5)


def _bad_requests() -> list[tuple[str, str, str, bytes, dict[str, str], int]]:
    good = fixture_body("pull_request.opened")
    other = fixture_body("pull_request.closed-merged")
    no_number = fixture_json("pull_request.opened")
    del no_number["pull_request"]["number"]
    no_number_body = json.dumps(no_number).encode()
    string_number = fixture_json("pull_request.opened")
    string_number["pull_request"]["number"] = "11"
    string_number_body = json.dumps(string_number).encode()
    digest = sign(SECRET, good)[len("sha256=") :]
    unsigned = {k: v for k, v in signed(good, "pull_request").items() if "Signature" not in k}
    form_without_payload = urllib.parse.urlencode({"data": good.decode()}).encode()
    form_bad_json = urllib.parse.urlencode({"payload": good.decode()[:200]}).encode()
    form_good = urllib.parse.urlencode({"payload": good.decode()}).encode()
    form = "application/x-www-form-urlencoded"
    deep = b'{"a": ' * 100_000 + b"1" + b"}" * 100_000
    huge_number = fixture_json("push.development")
    huge_number["pusher"]["id"] = "NUMBER"
    huge_number_body = json.dumps(huge_number).replace('"NUMBER"', "7" * 5000).encode()

    def with_sig(body: bytes, **override: str) -> dict[str, str]:
        return {**signed(body, "pull_request"), **override}

    return [
        ("no signature", "POST", "/github", good, unsigned, 401),
        (
            "wrong signature",
            "POST",
            "/github",
            good,
            with_sig(good, **{"X-Hub-Signature-256": "sha256=" + "0" * 64}),
            401,
        ),
        (
            "signature of another body",
            "POST",
            "/github",
            good,
            with_sig(good, **{"X-Hub-Signature-256": sign(SECRET, other)}),
            401,
        ),
        (
            "signature with another secret",
            "POST",
            "/github",
            good,
            signed(good, "pull_request", secret="not-the-secret"),
            401,
        ),
        (
            "sha1 header only",
            "POST",
            "/github",
            good,
            {**unsigned, "X-Hub-Signature": "sha1=" + "ab" * 20},
            401,
        ),
        (
            "wrong prefix",
            "POST",
            "/github",
            good,
            with_sig(good, **{"X-Hub-Signature-256": "sha512=" + digest}),
            401,
        ),
        (
            "bare hex digest",
            "POST",
            "/github",
            good,
            with_sig(good, **{"X-Hub-Signature-256": digest}),
            401,
        ),
        (
            "unsigned form body",
            "POST",
            "/github",
            form_good,
            {**unsigned, "Content-Type": form},
            401,
        ),
        (
            "unsigned, wrong content type too",
            "POST",
            "/github",
            good,
            {**unsigned, "Content-Type": "text/plain"},
            401,
        ),
        ("empty body", "POST", "/github", b"", with_sig(b""), 400),
        ("truncated JSON", "POST", "/github", good[:300], with_sig(good[:300]), 400),
        ("JSON array", "POST", "/github", b"[1, 2]", with_sig(b"[1, 2]"), 400),
        ("signed, deeply nested JSON", "POST", "/github", deep, with_sig(deep), 400),
        (
            "signed, a 5000-digit integer",
            "POST",
            "/github",
            huge_number_body,
            {**with_sig(huge_number_body), "X-GitHub-Event": "push"},
            400,
        ),
        (
            "missing pull_request.number",
            "POST",
            "/github",
            no_number_body,
            with_sig(no_number_body),
            400,
        ),
        (
            "string pull_request.number",
            "POST",
            "/github",
            string_number_body,
            with_sig(string_number_body),
            400,
        ),
        (
            "missing X-GitHub-Event",
            "POST",
            "/github",
            good,
            {k: v for k, v in with_sig(good).items() if k != "X-GitHub-Event"},
            400,
        ),
        (
            "malformed delivery id",
            "POST",
            "/github",
            good,
            with_sig(good, **{"X-GitHub-Delivery": "abc\u00e9; rm -rf"}),
            400,
        ),
        (
            "form without payload field",
            "POST",
            "/github",
            form_without_payload,
            with_sig(form_without_payload, **{"Content-Type": form}),
            400,
        ),
        (
            "form with truncated JSON",
            "POST",
            "/github",
            form_bad_json,
            with_sig(form_bad_json, **{"Content-Type": form}),
            400,
        ),
        (
            "wrong content type",
            "POST",
            "/github",
            good,
            with_sig(good, **{"Content-Type": "text/plain"}),
            415,
        ),
        (
            "no content type",
            "POST",
            "/github",
            good,
            {k: v for k, v in with_sig(good).items() if k != "Content-Type"},
            415,
        ),
        (
            "oversized body declared",
            "POST",
            "/github",
            b"{}",
            {**with_sig(b"{}"), "Content-Length": str(MAX_BODY + 1)},
            413,
        ),
        ("GET", "GET", "/github", b"", {}, 405),
        ("PUT", "PUT", "/github", good, with_sig(good), 405),
        ("wrong path", "POST", "/hooks/github", good, with_sig(good), 404),
        ("root path", "POST", "/", good, with_sig(good), 404),
    ]


BAD = _bad_requests()


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WebhookServer, RecordingExecutor, RecordingGitHub]]:
    recorder = RecordingGitHub().__enter__()
    recorder.permissions[MAINTAINER] = "admin"
    double = RecordingExecutor()
    srv = make_server(tmp_path_factory.mktemp("corpus"), double, recorder)
    yield srv, double, recorder
    srv.stop(drain_timeout=5)
    recorder.__exit__()


def test_bad_request_corpus_is_large_and_varied() -> None:
    assert len(BAD) >= 10
    assert {case[-1] for case in BAD} == {400, 401, 404, 405, 413, 415}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "expected"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_request_is_refused_and_changes_nothing(
    shared: tuple[WebhookServer, RecordingExecutor, RecordingGitHub],
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    expected: int,
) -> None:
    srv, double, recorder = shared
    status, _ = send(srv, body, headers, method, path)
    assert status == expected
    assert srv.wait_idle(5)
    assert double.intents() == []
    assert recorder.statuses() == []
    assert len(srv.deliveries) == 0


def test_oversized_uploads_are_cut_off(server: WebhookServer, executor: RecordingExecutor) -> None:
    big = b'{"zen": "' + b"x" * MAX_BODY + b'"}'
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    headers = signed(big, "ping")
    del headers["X-Hub-Signature-256"]
    conn.request("POST", "/github", body=iter([big]), headers=headers, encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    try:
        status, _ = send(server, big, signed(big, "ping"))
    except (ConnectionResetError, BrokenPipeError):
        status = 413  # refused on the header; the rest of the upload met a closed socket
    assert status == 413
    assert server.wait_idle(5)
    assert executor.intents() == []
    assert len(server.deliveries) == 0


def test_opened_is_accepted_at_once_and_executed(
    server: WebhookServer, executor: RecordingExecutor
) -> None:
    executor.delays[11] = 1.0
    started = time.monotonic()
    status, text = deliver(server, "pull_request.opened")
    assert status == 202, text
    assert time.monotonic() - started < 0.9, "the answer waited for the executor"
    assert server.wait_idle(5)
    assert executor.intents() == [PreviewUp(11, HEAD, "paulczar/ci-demo", False, OWN_CLONE)]


@pytest.mark.parametrize(
    ("name", "intent"),
    [
        ("push.development", StagingUp("e5bd3914e2e596debea16f433f57875b5b90bcd6", OWN_CLONE)),
        (
            "push.master",
            ProductionUp(
                "9049f1265b7d61be4a8904a9a27120d2064dab3b",
                (
                    "e5bd3914e2e596debea16f433f57875b5b90bcd6",
                    "9049f1265b7d61be4a8904a9a27120d2064dab3b",
                ),
                OWN_CLONE,
            ),
        ),
        ("pull_request.closed-unmerged", PreviewDown(12, merged=False)),
        ("pull_request.labeled-fork", PreviewUp(14, HEAD, "octocat/ci-demo", True, FORK_CLONE)),
    ],
)
def test_deliveries_reach_the_executor(
    server: WebhookServer, executor: RecordingExecutor, name: str, intent: Intent
) -> None:
    status, _ = deliver(server, name)
    assert status == 202
    assert server.wait_idle(5)
    assert executor.intents() == [intent]


def test_form_encoded_delivery_is_accepted(
    server: WebhookServer, executor: RecordingExecutor
) -> None:
    body = urllib.parse.urlencode({"payload": fixture_body("push.development").decode()}).encode()
    headers = {**signed(body, "push"), "Content-Type": "application/x-www-form-urlencoded"}
    status, _ = send(server, body, headers)
    assert status == 202
    assert server.wait_idle(5)
    assert executor.intents() == [StagingUp("e5bd3914e2e596debea16f433f57875b5b90bcd6", OWN_CLONE)]


@pytest.mark.parametrize(
    ("name", "code", "text"),
    [
        ("ping", 200, "pong"),
        ("issues.opened", 202, "ignored: event 'issues' is not handled"),
        ("push.delete", 202, "ignored: push deleted refs/heads/add-s3-storage"),
        ("pull_request.opened-fork", 202, "ignored: pull request #14 is from fork"),
    ],
)
def test_nothing_to_do_is_ok_and_runs_nothing(
    server: WebhookServer,
    executor: RecordingExecutor,
    github: RecordingGitHub,
    name: str,
    code: int,
    text: str,
) -> None:
    status, answer = deliver(server, name)
    assert (status, answer[: len(text)]) == (code, text)
    assert server.wait_idle(5)
    assert executor.intents() == []
    assert github.statuses() == []


def test_replayed_delivery_does_nothing_even_after_restart(
    tmp_path: Path, executor: RecordingExecutor, github: RecordingGitHub
) -> None:
    delivery = str(uuid.uuid4())
    first = make_server(tmp_path, executor, github)
    try:
        assert deliver(first, "pull_request.opened", delivery)[0] == 202
        assert deliver(first, "pull_request.opened", delivery) == (200, "duplicate delivery")
        assert first.wait_idle(5)
    finally:
        first.stop(drain_timeout=5)
    second = make_server(tmp_path, executor, github)
    try:
        assert deliver(second, "pull_request.opened", delivery) == (200, "duplicate delivery")
        assert second.wait_idle(5)
    finally:
        second.stop(drain_timeout=5)
    assert len(executor.intents()) == 1


def test_refused_delivery_can_be_redelivered(
    server: WebhookServer, executor: RecordingExecutor
) -> None:
    delivery = str(uuid.uuid4())
    broken = b'{"action": "opened"'
    assert send(server, broken, signed(broken, "pull_request", delivery))[0] == 400
    assert deliver(server, "pull_request.opened", delivery)[0] == 202
    assert server.wait_idle(5)
    assert len(executor.intents()) == 1


def test_concurrent_copies_of_one_delivery_run_once(
    server: WebhookServer, executor: RecordingExecutor
) -> None:
    delivery = str(uuid.uuid4())
    codes: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(deliver(server, "push.development", delivery)[0])
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert server.wait_idle(5)
    assert sorted(codes) == [200] * 7 + [202]
    assert len(executor.intents()) == 1


def test_close_never_overtakes_open_of_the_same_pr(
    server: WebhookServer, executor: RecordingExecutor
) -> None:
    opened = fixture_json("pull_request.opened")
    opened["pull_request"]["number"] = 21
    closed = fixture_json("pull_request.closed-merged")
    closed["pull_request"]["number"] = 21
    other = fixture_json("pull_request.opened")
    other["pull_request"]["number"] = 22
    executor.delays[21] = 0.6
    for data in (opened, closed, other):
        body = json.dumps(data).encode()
        assert send(server, body, signed(body, "pull_request"))[0] == 202
    assert server.wait_idle(10)
    calls = {(type(c.intent).__name__, c.intent.pr): c for c in executor.calls}  # type: ignore[union-attr]
    up21, down21, up22 = (
        calls[("PreviewUp", 21)],
        calls[("PreviewDown", 21)],
        calls[("PreviewUp", 22)],
    )
    assert down21.started >= up21.ended, "PR 21 was closed before its preview finished"
    # the pool is parallel, so the order above is the queue's doing, not a single worker's
    assert up22.started < up21.ended


def test_commit_statuses_carry_the_preview_url(
    server: WebhookServer, github: RecordingGitHub
) -> None:
    assert deliver(server, "pull_request.opened")[0] == 202
    assert server.wait_idle(5)
    pending, success = github.wait_for(2)
    assert pending.path == success.path == f"/repos/paulczar/ci-demo/statuses/{HEAD}"
    assert pending.body["state"] == "pending"
    assert success.body == {
        "state": "success",
        "target_url": "http://pr-11-ghost.cidemo.test",
        "description": f"preview of PR #11 at {HEAD[:12]} is up",
        "context": "cidemo/preview",
    }
    assert success.headers["Authorization"] == f"Bearer {TOKEN}"
    assert success.headers["Accept"] == "application/vnd.github+json"


def test_status_is_retried_after_5xx(server: WebhookServer, github: RecordingGitHub) -> None:
    github.fail_next = 2
    assert deliver(server, "push.development")[0] == 202
    assert server.wait_idle(10)
    requests = github.wait_for(4)
    assert len(requests) == 4  # pending twice refused, pending, success
    assert [r.body["state"] for r in requests] == ["pending"] * 3 + ["success"]
    assert requests[-1].body["context"] == "cidemo/staging"


@pytest.mark.parametrize("failure", ["not ok", "raises"])
def test_failed_deploy_is_reported_as_failure_without_its_detail(
    tmp_path: Path, github: RecordingGitHub, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cidemo.webhook")
    double = RecordingExecutor(ok=False)
    internal = "cannot reach 10.213.7.12:2376 (deis-2.internal)"
    if failure == "raises":
        double.fail_with = RuntimeError(internal)
    srv = make_server(tmp_path, double, github)
    try:
        assert deliver(srv, "pull_request.opened")[0] == 202
        assert srv.wait_idle(5)
    finally:
        srv.stop(drain_timeout=5)
    last = github.wait_for(2)[-1]
    assert last.body["state"] == "failure"
    assert "target_url" not in last.body
    detail = internal if failure == "raises" else "boom"
    description = last.body["description"]
    assert detail not in description and "10.213" not in description
    ref = re.fullmatch(r"deploy failed; ref ([0-9a-f]{8}) in the webhook server's log", description)
    assert ref, description
    logged = [r.getMessage() for r in caplog.records if f"ref={ref.group(1)}" in r.getMessage()]
    assert len(logged) == 1 and detail in logged[0], logged


def test_log_has_one_line_per_delivery_without_bodies_or_secrets(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cidemo.webhook")
    delivery = str(uuid.uuid4())
    deliver(server, "pull_request.opened", delivery)
    deliver(server, "pull_request.opened", delivery)
    body = fixture_body("ping")
    send(server, body, {**signed(body, "ping"), "X-Hub-Signature-256": "sha256=" + "1" * 64})
    assert server.wait_idle(5)
    lines = [r.getMessage() for r in caplog.records if r.name == "cidemo.webhook"]
    verdicts = [line for line in lines if "verdict=" in line]
    assert len(verdicts) == 3
    assert f"delivery={delivery} event=pull_request action=opened verdict=queued" in verdicts[0]
    assert verdicts[1].endswith("verdict=duplicate delivery")
    assert "verdict=signature missing or wrong" in verdicts[2]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret_or_body in (SECRET, TOKEN, "Moves uploaded images", "Design for failure"):
        assert secret_or_body not in everything


def test_stop_drains_the_queue(tmp_path: Path, github: RecordingGitHub) -> None:
    double = RecordingExecutor(delays={31: 0.3, 32: 0.3, 33: 0.3})
    srv = make_server(tmp_path, double, None, workers=1)
    for pr in (31, 32, 33):
        data = fixture_json("pull_request.opened")
        data["pull_request"]["number"] = pr
        body = json.dumps(data).encode()
        assert send(srv, body, signed(body, "pull_request"))[0] == 202
    assert srv.stop(drain_timeout=10) == 0
    assert [i.pr for i in double.intents()] == [31, 32, 33]  # type: ignore[union-attr]


def test_drain_is_bounded(tmp_path: Path) -> None:
    double = RecordingExecutor(delays={41: 0.5, 42: 0.5, 43: 0.5})
    srv = make_server(tmp_path, double, None, workers=1)
    for pr in (41, 42, 43):
        data = fixture_json("pull_request.opened")
        data["pull_request"]["number"] = pr
        body = json.dumps(data).encode()
        assert send(srv, body, signed(body, "pull_request"))[0] == 202
    started = time.monotonic()
    left = srv.stop(drain_timeout=0.2)
    assert left >= 1
    assert time.monotonic() - started < 5


def test_full_queue_answers_503_and_forgets_the_delivery(tmp_path: Path) -> None:
    double = RecordingExecutor(delays={51: 1.0})
    srv = make_server(tmp_path, double, None, workers=1, max_queued=2)
    try:
        first = fixture_json("pull_request.opened")
        first["pull_request"]["number"] = 51
        body = json.dumps(first).encode()
        assert send(srv, body, signed(body, "pull_request"))[0] == 202
        # running or queued, #51 and this push fill the bound of 2
        assert deliver(srv, "push.development")[0] == 202
        delivery = str(uuid.uuid4())
        assert deliver(srv, "push.master", delivery)[0] == 503
        assert delivery not in srv.deliveries
        assert srv.wait_idle(5)
    finally:
        srv.stop(drain_timeout=5)
    assert not any(isinstance(i, ProductionUp) for i in double.intents())


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8088", ("127.0.0.1", 8088)),
        ("[::1]:9000", ("::1", 9000)),
        ("hooks.cidemo.test:80", ("hooks.cidemo.test", 80)),
    ],
)
def test_listen_addresses(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen",
    [
        "8088",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "::1:8088",
        "host name:80",
        ":8088",
        "127.0.0.1:80x",
    ],
)
def test_serve_refuses_bad_listen_in_one_line(listen: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        webhook,
        [
            "serve",
            "--site",
            str(bound_site(tmp_path)),
            "--listen",
            listen,
            "--state-dir",
            str(tmp_path),
        ],
        env={"CIDEMO_WEBHOOK_SECRET": SECRET},
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--listen" in lines[0], result.output


def test_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        webhook,
        [
            "serve",
            "--site",
            str(bound_site(tmp_path)),
            "--listen",
            "127.0.0.1:8088",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={"CIDEMO_WEBHOOK_SECRET": ""},
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no webhook secret" in lines[0], result.output
    assert not (tmp_path / "state" / "secrets" / "webhook_secret").exists()


def bound_site(tmp_path: Path, repository: str | None = REPOSITORY) -> Path:
    """infra/sites/local.yaml with `environments.repository` set (or left out: None)."""
    data = yaml.safe_load((SITES / "local.yaml").read_text())
    envs = data.get("environments") or {}
    build = envs.get("build")
    if isinstance(build, dict) and "source" in build:  # relative to the site file, which moves
        build["source"] = str((SITES / build["source"]).resolve())
    elif isinstance(build, str):
        envs["build"] = str((SITES / build).resolve())
    if repository is not None:
        data.setdefault("environments", {})["repository"] = repository
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_runs_logs_answers_and_stops_on_sigterm(
    tmp_path: Path, github: RecordingGitHub
) -> None:
    """Through the `cidemo` entry point, whose logging setup once silenced the server; GitHub's
    stand-in is named by CIDEMO_GITHUB_API and asked about a label's sender."""
    state = tmp_path / "state"
    (state / "secrets").mkdir(parents=True)
    (state / "secrets" / "webhook_secret").write_text(SECRET + "\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIDEMO_")}
    env |= {"CIDEMO_GITHUB_API": github.url, "CIDEMO_GITHUB_TOKEN": TOKEN}
    github.permissions["mallory"] = "read"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cidemo_infra",
            "webhook",
            "serve",
            "--site",
            str(bound_site(tmp_path)),
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(state),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = fixture_body("ping")
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", "/github", body=body, headers=signed(body, "ping"))
                response = conn.getresponse()
                answer = (response.status, response.read().decode().strip())
                conn.close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "webhook serve did not start listening"
                time.sleep(0.1)
        assert answer == (200, "pong")
        other = fixture_json("push.master")
        other["repository"]["full_name"] = "someone/else"
        push = json.dumps(other).encode()
        delivery = str(uuid.uuid4())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/github", body=push, headers=signed(push, "push", delivery))
        assert conn.getresponse().status == 202
        conn.close()
        label = labeled_by("mallory")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/github", body=label, headers=signed(label, "pull_request"))
        response = conn.getresponse()
        refused = (response.status, response.read().decode())
        conn.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"on http://127.0.0.1:{port}/github" in err
    assert "verdict=pong" in err
    assert f"delivery={delivery} event=push action=- verdict=ignored: repository someone" in err
    assert refused[0] == 202 and "added by 'mallory', who has no write access" in refused[1]
    assert [r.path for r in github.permission_checks()] == [
        f"/repos/{REPOSITORY}/collaborators/mallory/permission"
    ]
    assert "refused: pull request #14" in err
    assert TOKEN not in err
    for secret_or_body in (SECRET, "Merge pull request", other["head_commit"]["message"]):
        assert secret_or_body not in err


def test_serve_refuses_a_taken_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")]
        result = CliRunner().invoke(
            webhook,
            ["serve", "--site", str(bound_site(tmp_path)), *args],
            env={"CIDEMO_WEBHOOK_SECRET": SECRET},
        )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0]


def test_serve_refuses_to_start_without_a_repository(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        webhook,
        [
            "serve",
            "--site",
            str(bound_site(tmp_path, repository=None)),
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={"CIDEMO_WEBHOOK_SECRET": SECRET},
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "environments.repository: required" in lines[0], result.output
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "api", ["http://api.github.example.com", "http://10.0.0.5:8080/api/v3", "ftp://127.0.0.1"]
)
def test_serve_refuses_a_github_api_that_would_carry_the_token_in_clear(
    tmp_path: Path, api: str
) -> None:
    result = CliRunner().invoke(
        webhook,
        [
            "serve",
            "--site",
            str(bound_site(tmp_path)),
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={
            "CIDEMO_WEBHOOK_SECRET": SECRET,
            "CIDEMO_GITHUB_TOKEN": TOKEN,
            "CIDEMO_GITHUB_API": api,
        },
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "CIDEMO_GITHUB_API" in lines[0] and api in lines[0], result.output
    assert TOKEN not in result.output


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
def test_events_of_another_repository_are_answered_and_change_nothing(
    server: WebhookServer,
    executor: RecordingExecutor,
    github: RecordingGitHub,
    name: str,
    event: str,
) -> None:
    data = fixture_json(name)
    data["repository"]["full_name"] = "octocat/other-app"
    if "pull_request" in data:  # the PR is the other repository's own, not a fork
        data["pull_request"]["head"]["repo"]["full_name"] = "octocat/other-app"
    body = json.dumps(data).encode()
    status, text = send(server, body, signed(body, event))
    assert status == 202
    assert text.startswith(
        f"ignored: repository octocat/other-app is not this site's ({REPOSITORY})"
    ), text
    assert server.wait_idle(5)
    assert executor.intents() == []
    assert github.requests == []


def labeled_by(sender: str) -> bytes:
    data = fixture_json("pull_request.labeled-fork")
    data["sender"]["login"] = sender
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("permission", "expected"),
    [
        ("admin", "accepted"),
        ("maintain", "accepted"),
        ("write", "accepted"),
        ("read", "refused"),
        ("triage", "refused"),
        (None, "refused"),  # not a collaborator: GitHub answers 404
    ],
)
def test_fork_label_deploys_only_when_its_sender_may_write(
    server: WebhookServer,
    executor: RecordingExecutor,
    github: RecordingGitHub,
    permission: str | None,
    expected: str,
) -> None:
    if permission is not None:
        github.permissions["mallory"] = permission
    body = labeled_by("mallory")
    delivery = str(uuid.uuid4())
    status, text = send(server, body, signed(body, "pull_request", delivery))
    assert status == 202
    assert text.startswith(expected), text
    assert server.wait_idle(5)
    checks = github.permission_checks()
    assert checks and checks[0].path == f"/repos/{REPOSITORY}/collaborators/mallory/permission"
    assert checks[0].headers["Authorization"] == f"Bearer {TOKEN}"
    if expected == "accepted":
        assert executor.intents() == [PreviewUp(14, HEAD, "octocat/ci-demo", True, FORK_CLONE)]
    else:
        assert "label 'safe-to-deploy' added by 'mallory'" in text
        assert executor.intents() == []
        assert [d for d, _ in server.pushes.refusals()] == [delivery]


def test_fork_label_is_answered_503_and_forgotten_when_github_does_not_say(
    server: WebhookServer, executor: RecordingExecutor, github: RecordingGitHub
) -> None:
    github.permissions["mallory"] = "write"
    github.fail_next = 1  # the permission question gets a 502
    body = labeled_by("mallory")
    delivery = str(uuid.uuid4())
    status, text = send(server, body, signed(body, "pull_request", delivery))
    assert (status, text) == (
        503,
        "could not check the sender's write access; GitHub may redeliver later",
    )
    assert server.wait_idle(5)
    assert executor.intents() == []
    assert delivery not in server.deliveries
    # GitHub's "Redeliver": the same delivery id, and this time the question is answered
    assert send(server, body, signed(body, "pull_request", delivery))[0] == 202
    assert server.wait_idle(5)
    assert executor.intents() == [PreviewUp(14, HEAD, "octocat/ci-demo", True, FORK_CLONE)]


@pytest.mark.parametrize("listed", [True, False])
def test_fork_label_without_a_token_needs_the_allow_list(
    tmp_path: Path, executor: RecordingExecutor, listed: bool
) -> None:
    logins = ("mallory",) if listed else ()
    settings = DeliverySettings(repository=REPOSITORY, authorized_logins=logins)
    srv = make_server(tmp_path, executor, None, settings=settings)
    try:
        body = labeled_by("mallory")
        status, text = send(srv, body, signed(body, "pull_request"))
        assert srv.wait_idle(5)
    finally:
        srv.stop(drain_timeout=5)
    assert status == 202
    if listed:
        assert executor.intents() == [PreviewUp(14, HEAD, "octocat/ci-demo", True, FORK_CLONE)]
    else:
        assert text.startswith("refused:") and "authorized_logins" in text, text
        assert executor.intents() == []


def push_of(branch: str, after: str, forced: bool = False, sender: str = MAINTAINER) -> bytes:
    data = fixture_json("push.master" if branch == "master" else "push.development")
    data["after"] = after
    data["head_commit"]["id"] = after
    data["commits"] = [{**data["commits"][-1], "id": after}]
    data["forced"] = forced
    data["sender"]["login"] = sender
    return json.dumps(data).encode()


SHA_A, SHA_B, SHA_C = ("a" * 40, "b" * 40, "c" * 40)


def test_replayed_push_with_a_new_delivery_id_is_refused_recorded_and_logged(
    tmp_path: Path,
    executor: RecordingExecutor,
    github: RecordingGitHub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cidemo.webhook")
    first = make_server(tmp_path, executor, github)
    try:
        captured = push_of("master", SHA_A)
        assert send(first, captured, signed(captured, "push"))[0] == 202
        newer = push_of("master", SHA_B)
        assert send(first, newer, signed(newer, "push"))[0] == 202
        assert first.wait_idle(5)
    finally:
        first.stop(drain_timeout=5)
    # later, after a restart, the captured body comes back, signed as it was, with a new id
    second = make_server(tmp_path, executor, github)
    try:
        replay = str(uuid.uuid4())
        status, text = send(second, captured, signed(captured, "push", replay))
        assert second.wait_idle(5)
        refusals = second.pushes.refusals()
        # the branch's latest may always be delivered again (a redelivery, a retried deploy)
        latest = push_of("master", SHA_B)
        assert send(second, latest, signed(latest, "push"))[0] == 202
        assert second.wait_idle(5)
    finally:
        second.stop(drain_timeout=5)
    assert status == 202
    assert text.startswith(f"refused: push of {SHA_A[:12]} to master: an earlier push"), text
    assert [d for d, _ in refusals] == [replay]
    assert [i.sha for i in executor.intents()] == [SHA_A, SHA_B, SHA_B]  # type: ignore[union-attr]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"delivery={replay} refused: push of {SHA_A[:12]}" in w for w in warnings)
    # the first push's pending and success on A; nothing for the replay
    assert len([r for r in github.statuses() if r.path.endswith(f"/{SHA_A}")]) == 2


@pytest.mark.parametrize(
    ("sender", "permission", "expected"),
    [(MAINTAINER, "admin", "accepted"), ("mallory", "read", "refused")],
)
def test_forced_rollback_needs_a_sender_with_write_access(
    server: WebhookServer,
    executor: RecordingExecutor,
    github: RecordingGitHub,
    sender: str,
    permission: str,
    expected: str,
) -> None:
    github.permissions[sender] = permission
    for sha in (SHA_A, SHA_B):
        body = push_of("master", sha)
        assert send(server, body, signed(body, "push"))[0] == 202
    rollback = push_of("master", SHA_A, forced=True, sender=sender)
    status, text = send(server, rollback, signed(rollback, "push"))
    assert server.wait_idle(5)
    assert status == 202 and text.startswith(expected), text
    shas = [i.sha for i in executor.intents()]  # type: ignore[union-attr]
    if expected == "accepted":
        assert shas == [SHA_A, SHA_B, SHA_A]
        assert server.pushes.latest("master") == SHA_A
    else:
        assert shas == [SHA_A, SHA_B]
        assert "it is forced, but by 'mallory', who has no write access" in text
        assert server.pushes.latest("master") == SHA_B


def test_replay_rule_is_per_branch(server: WebhookServer, executor: RecordingExecutor) -> None:
    for branch, sha in (("development", SHA_A), ("master", SHA_A), ("development", SHA_B)):
        body = push_of(branch, sha)
        assert send(server, body, signed(body, "push"))[0] == 202
    assert server.wait_idle(5)
    assert [type(i).__name__ for i in executor.intents()] == [
        "StagingUp",
        "ProductionUp",
        "StagingUp",
    ]


def test_failed_or_superseded_deploys_never_block_later_pushes(
    tmp_path: Path, github: RecordingGitHub
) -> None:
    double = RecordingExecutor(ok=False)
    srv = make_server(tmp_path, double, github, workers=1)
    try:
        for sha in (SHA_A, SHA_A, SHA_B, SHA_C):  # A fails, is pushed again, then B and C queue
            body = push_of("master", sha)
            status, text = send(srv, body, signed(body, "push"))
            assert (status, text[:8]) == (202, "accepted"), text
        assert srv.wait_idle(10)
    finally:
        srv.stop(drain_timeout=5)
    assert [i.sha for i in double.intents()] == [SHA_A, SHA_A, SHA_B, SHA_C]  # type: ignore[union-attr]


def _slow_client(source: str, server: WebhookServer) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((server.host, server.port))
    sock.sendall(b"POST /github HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"a")
        sock.settimeout(0.05)
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slow_clients_cannot_keep_a_signed_delivery_out(
    tmp_path: Path, executor: RecordingExecutor
) -> None:
    """110 slow connections from 127.0.0.2 (more than waitress' 100 by default), each sending
    its headers one byte at a time; a delivery from 127.0.0.1 is still answered."""
    srv = make_server(tmp_path, executor, None)
    slow: list[socket.socket] = []
    try:
        for _ in range(110):
            try:
                slow.append(_slow_client("127.0.0.2", srv))
            except OSError:
                break  # refused or reset at once: the cap at work
        for sock in slow:  # one more byte each: all of them are still "active"
            with contextlib.suppress(OSError):
                sock.sendall(b"b")
        body = fixture_body("push.development")
        conn = http.client.HTTPConnection(
            srv.host, srv.port, timeout=10, source_address=("127.0.0.1", 0)
        )
        conn.request("POST", "/github", body=body, headers=signed(body, "push"))
        response = conn.getresponse()
        answer = (response.status, response.read().decode().strip())
        conn.close()
        assert srv.wait_idle(5)
        held = sum(1 for sock in slow if not _closed_by_peer(sock))
    finally:
        for sock in slow:
            sock.close()
        srv.stop(drain_timeout=5)
    assert answer[0] == 202, answer
    assert executor.intents() == [StagingUp("e5bd3914e2e596debea16f433f57875b5b90bcd6", OWN_CLONE)]
    assert held <= 16, f"127.0.0.2 holds {held} connections"


def test_a_request_that_never_completes_is_cut_off(
    tmp_path: Path, executor: RecordingExecutor
) -> None:
    """A client that keeps sending, a byte every 0.2 s, never idles; it is closed anyway."""
    srv = make_server(tmp_path, executor, None, request_timeout=1.0)
    sock = _slow_client("127.0.0.1", srv)
    closed = False
    try:
        for _ in range(100):  # 20 s at most; the server's deadline is 1 s
            time.sleep(0.2)
            try:
                sock.sendall(b"x")
            except OSError:
                closed = True
                break
            sock.settimeout(0.01)
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
            if closed:
                break
    finally:
        sock.close()
        srv.stop(drain_timeout=5)
    assert closed, "the server kept a request open that had been arriving for 20 s"
    assert executor.intents() == []
