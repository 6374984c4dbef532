"""The GitHub webhook endpoint: `POST /github`, verified, de-duplicated, queued, answered at once.

Served by waitress: a maintained, pure-Python production WSGI server (no compiler, no event loop)
with its own request-size limit, which suits a small synchronous endpoint in front of a queue.

A request goes through, in order: path (404), method (405), size (413: a body is bounded before
it is read), signature over the raw body (401), content type (415), GitHub's headers (400), the
delivery log (200 "duplicate delivery"), JSON and the event mapping (400), then 202: queued, or
ignored with the reason (503 when the queue is full or GitHub did not answer whether the sender
may write; the delivery is then forgotten, so its redelivery can succeed). A request without
the right signature gets 401 whatever else is wrong with it. Nothing is parsed before the
signature matched and nothing is queued twice. Before queueing, `admission` refuses what the
delivery may not have (a label without write access, a replayed push): 202 with the reason.
Workers run the intents through an `IntentExecutor`; intents of one pull request run one at a
time in arrival order. Each request is logged on one line: delivery id, event, action, verdict.
Bodies and secrets are never logged. Commit statuses say only what happened; why a deploy
failed is in the log, under a reference id.

Slow clients cannot hold the server: a connection must finish its request within
`request_timeout` seconds of opening (idle ones go after `idle_timeout`), one peer address holds
at most `max_per_peer` connections, and all peers together `max_connections`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import secrets
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from cidemo_infra.webhook import signature
from cidemo_infra.webhook.admission import AccessUnknown, Admission, PushLog, WriteAccess
from cidemo_infra.webhook.events import (
    DeliverySettings,
    ExecutionResult,
    Intent,
    IntentExecutor,
    PayloadError,
    PreviewDown,
    PreviewUp,
    ProductionUp,
    Refused,
    StagingUp,
    commit_of,
    is_actionable,
    map_event,
    ordering_key,
    repository_of,
)
from cidemo_infra.webhook.status import CommitStatus, CommitStatusClient, State, StatusError

PATH = "/github"
MAX_BODY = 5 * 1024 * 1024
MAX_QUEUED = 1000
DELIVERY_LOG_SIZE = 10_000
REQUEST_TIMEOUT = 10.0  # seconds from connect to a complete request (GitHub sends at once)
IDLE_TIMEOUT = 5.0
MAX_CONNECTIONS = 64
MAX_PER_PEER = 16
MAX_INT_DIGITS = 40  # no field GitHub sends is a longer number
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_EVENT = re.compile(r"^[a-z_]{1,64}$")
_CONTEXTS = {
    PreviewUp: "cidemo/preview",
    StagingUp: "cidemo/staging",
    ProductionUp: "cidemo/production",
}

log = logging.getLogger("cidemo.webhook")

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Work:
    """One intent of one delivery, with the repository its commit statuses go to."""

    delivery: str
    repo: str
    intent: Intent


class DeliveryLog:
    """Delivery ids already accepted, in a small SQLite file, pruned to the newest `max_entries`.

    `claim` is atomic, so two copies of one delivery arriving together queue it once; `release`
    forgets a claim whose delivery was then refused, so GitHub's redelivery of it can succeed.
    """

    def __init__(self, path: Path, max_entries: int = DELIVERY_LOG_SIZE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, seen REAL NOT NULL)"
        )
        path.chmod(0o600)

    def claim(self, delivery: str) -> bool:
        """True if `delivery` was new (and is now recorded); False for a replay."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO deliveries (id, seen) VALUES (?, ?)",
                (delivery, time.time()),
            )
            if cur.rowcount != 1:
                return False
            self._db.execute(
                "DELETE FROM deliveries WHERE id NOT IN "
                "(SELECT id FROM deliveries ORDER BY seen DESC, rowid DESC LIMIT ?)",
                (self.max_entries,),
            )
            return True

    def release(self, delivery: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE id = ?", (delivery,))

    def __contains__(self, delivery: object) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery,))
            return row.fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class QueueFull(Exception):
    pass


@dataclass
class _Lanes:
    pending: dict[str, collections.deque[Work]] = field(default_factory=dict)
    ready: collections.deque[str] = field(default_factory=collections.deque)
    active: set[str] = field(default_factory=set)
    size: int = 0


class OrderedWorkQueue:
    """A bounded pool of worker threads; work with the same key runs serially, in order.

    Each key is a lane: a lane is handed to at most one worker at a time, so a pull request's
    `closed` can never overtake its `opened`, while other pull requests proceed in parallel.
    """

    def __init__(
        self, handle: Callable[[Work], None], workers: int = 2, max_queued: int = MAX_QUEUED
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._handle = handle
        self._max = max_queued
        self._lanes = _Lanes()
        self._cv = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"cidemo-webhook-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def put_all(self, items: Iterable[tuple[str, Work]]) -> None:
        """Queue every item or none of them (QueueFull when the bound would be passed)."""
        batch = list(items)
        with self._cv:
            if not self._accepting:
                raise QueueFull("shutting down")
            if self._lanes.size + len(batch) > self._max:
                raise QueueFull(f"{self._lanes.size} intents already queued")
            for key, work in batch:
                lane = self._lanes.pending.setdefault(key, collections.deque())
                lane.append(work)
                self._lanes.size += 1
                if key not in self._lanes.active and key not in self._lanes.ready:
                    self._lanes.ready.append(key)
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._lanes.size or self._lanes.active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def shutdown(self, drain_timeout: float) -> int:
        """Stop accepting, run what is queued for up to `drain_timeout` s; return what was left."""
        with self._cv:
            self._accepting = False
        self.wait_idle(drain_timeout)
        with self._cv:
            left = self._lanes.size
            self._stopping = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=1.0)
        return left

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._lanes.ready and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                key = self._lanes.ready.popleft()
                self._lanes.active.add(key)
                work = self._lanes.pending[key].popleft()
            try:
                self._handle(work)
            except Exception:  # a worker must survive any one intent
                log.exception("delivery=%s worker error", work.delivery)
            finally:
                with self._cv:
                    self._lanes.size -= 1
                    self._lanes.active.discard(key)
                    if self._lanes.pending[key]:
                        self._lanes.ready.append(key)
                    else:
                        del self._lanes.pending[key]
                    self._cv.notify_all()


class IntentRunner:
    """Runs one queued intent through the executor and reports it as a commit status."""

    def __init__(self, executor: IntentExecutor, statuses: CommitStatusClient | None) -> None:
        self.executor = executor
        self.statuses = statuses

    def __call__(self, work: Work) -> None:
        intent = work.intent
        self._status(work, "pending", f"building and deploying {_describe(intent)}", None)
        try:
            result = self.executor.execute(intent)
        except Exception as exc:  # the executor's failure is reported, not raised
            result = ExecutionResult(url=None, ok=False, detail=f"{type(exc).__name__}: {exc}")
        # the detail names internal hosts and addresses: it stays here, GitHub gets the ref
        ref = secrets.token_hex(4)
        log.log(
            logging.INFO if result.ok else logging.WARNING,
            "delivery=%s ref=%s intent=%s ok=%s url=%s detail=%s",
            work.delivery,
            ref,
            _describe(intent),
            result.ok,
            result.url or "-",
            _one_line(result.detail),
        )
        if result.ok:
            self._status(work, "success", f"{_describe(intent)} is up", result.url)
        else:
            kind = result.summary or "deploy failed"
            self._status(work, "failure", f"{kind}; ref {ref} in the webhook server's log", None)

    def _status(self, work: Work, state: State, description: str, url: str | None) -> None:
        sha = commit_of(work.intent)
        context = _CONTEXTS.get(type(work.intent))
        if self.statuses is None or sha is None or context is None:
            return
        try:
            self.statuses.post(CommitStatus(work.repo, sha, state, description, url, context))
        except StatusError as exc:
            log.warning("delivery=%s %s", work.delivery, exc)


class WebhookApp:
    """The WSGI application; every answer is plain text of one line."""

    def __init__(
        self,
        secret: str,
        settings: DeliverySettings,
        deliveries: DeliveryLog,
        queue: OrderedWorkQueue,
        max_body: int = MAX_BODY,
        admission: Admission | None = None,
        on_queued: Callable[[Intent], None] | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the webhook secret is empty")
        self.on_queued = on_queued
        self._secret = secret
        self.settings = settings
        self.deliveries = deliveries
        self.queue = queue
        self.max_body = max_body
        self.admission = admission

    def __repr__(self) -> str:
        return f"WebhookApp(settings={self.settings!r})"

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        code, text, line = self._handle(environ)
        log.info(
            "delivery=%s event=%s action=%s verdict=%s",
            line.get("delivery", "-"),
            line.get("event", "-"),
            _one_line(line.get("action", "-")),
            _one_line(line.get("verdict", text)),
        )
        body = (text + "\n").encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        if code == 405:
            headers.append(("Allow", "POST"))
        start_response(_STATUS[code], headers)
        return [body]

    def _handle(self, environ: dict[str, Any]) -> tuple[int, str, dict[str, str]]:
        line: dict[str, str] = {}
        if environ.get("PATH_INFO") != PATH:
            return 404, "not found", line
        if environ.get("REQUEST_METHOD") != "POST":
            return 405, "method not allowed; POST only", line
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return 400, "bad Content-Length", line
        if length > self.max_body:
            return 413, f"body over {self.max_body} bytes", line
        body = environ["wsgi.input"].read(length) if length else b""

        if not signature.is_valid_signature(
            self._secret, body, environ.get("HTTP_X_HUB_SIGNATURE_256")
        ):
            return 401, "signature missing or wrong", line
        media = _media_type(environ.get("CONTENT_TYPE", ""))
        if media not in ("application/json", "application/x-www-form-urlencoded"):
            return 415, "content type must be application/json or form-urlencoded", line

        delivery = environ.get("HTTP_X_GITHUB_DELIVERY", "")
        event = environ.get("HTTP_X_GITHUB_EVENT", "")
        if not _DELIVERY_ID.match(delivery):
            return 400, "X-GitHub-Delivery missing or malformed", line
        line["delivery"] = delivery
        if not _EVENT.match(event):
            return 400, "X-GitHub-Event missing or malformed", line
        line["event"] = event

        if not self.deliveries.claim(delivery):
            return 200, "duplicate delivery", line
        try:
            code, text = self._accept(delivery, event, media, body, line)
        except BaseException:
            self.deliveries.release(delivery)
            raise
        if code >= 400:
            self.deliveries.release(delivery)
        return code, text, line

    def _accept(
        self, delivery: str, event: str, media: str, body: bytes, line: dict[str, str]
    ) -> tuple[int, str]:
        try:
            payload = _decode(media, body)
            action = payload.get("action") if isinstance(payload, dict) else None
            if isinstance(action, str):
                line["action"] = action[:40]
            intents = map_event(event, payload, self.settings)
            if self.admission is not None and any(is_actionable(i) for i in intents):
                intents = self.admission.admit(delivery, payload, intents)
            actionable = [i for i in intents if is_actionable(i)]
            repo = repository_of(payload) if actionable else ""
        except PayloadError as exc:
            line["verdict"] = f"bad payload: {exc}"
            return 400, f"bad payload: {exc}"
        except AccessUnknown as exc:
            line["verdict"] = f"unanswered: {exc}"
            return 503, "could not check the sender's write access; GitHub may redeliver later"
        if event == "ping":
            line["verdict"] = "pong"
            return 200, "pong"
        refused = [i.reason for i in intents if isinstance(i, Refused)]
        if refused and not actionable:
            reasons = "; ".join(refused)
            log.warning("delivery=%s refused: %s", delivery, _one_line(reasons))
            line["verdict"] = f"refused: {reasons}"
            return 202, f"refused: {reasons}"
        if not actionable:
            reasons = "; ".join(getattr(i, "reason", "") for i in intents)
            line["verdict"] = f"ignored: {reasons}"
            return 202, f"ignored: {reasons}"
        try:
            self.queue.put_all((ordering_key(i), Work(delivery, repo, i)) for i in actionable)
        except QueueFull as exc:
            line["verdict"] = f"queue full ({exc})"
            return 503, "busy; GitHub may redeliver later"
        if self.on_queued is not None:
            for intent in actionable:
                self.on_queued(intent)
        described = ", ".join(_describe(i) for i in actionable)
        line["verdict"] = f"queued {described}"
        return 202, f"accepted: {described}"


class WebhookServer:
    """The webhook app on waitress, plus its worker pool; `stop` drains the queue (bounded)."""

    def __init__(
        self,
        secret: str,
        executor: IntentExecutor,
        delivery_log: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: DeliverySettings | None = None,
        statuses: CommitStatusClient | None = None,
        workers: int = 2,
        max_body: int = MAX_BODY,
        max_queued: int = MAX_QUEUED,
        access: WriteAccess | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_per_peer: int = MAX_PER_PEER,
    ) -> None:
        settings = settings or DeliverySettings()
        if not settings.repository:
            raise ValueError("settings.repository is empty: the server acts for one repository")
        self.deliveries = DeliveryLog(delivery_log)
        self.pushes = PushLog(delivery_log)
        self.queue = OrderedWorkQueue(IntentRunner(executor, statuses), workers, max_queued)
        self.app = WebhookApp(
            secret,
            settings,
            self.deliveries,
            self.queue,
            max_body,
            Admission(settings, self.pushes, access),
            getattr(executor, "queued", None),
        )
        self._map: dict[int, Any] = {}
        try:
            adj = Adjustments(
                host=host,
                port=port,
                threads=4,
                # waitress answers 413 on the header alone, before reading such a body
                max_request_body_size=max_body,
                ident="cidemo-webhook",
                clear_untrusted_proxy_headers=True,
                connection_limit=max_connections,
                channel_timeout=idle_timeout,
                cleanup_interval=min(1.0, request_timeout / 2),
            )
            tasks = ThreadedTaskDispatcher()
            tasks.set_thread_count(adj.threads)
            self._server = _GuardedServer(
                self.app,
                map=self._map,
                dispatcher=tasks,
                adj=adj,
                sockinfo=adj.listen[0],
                request_timeout=request_timeout,
                max_per_peer=max_per_peer,
            )
        except BaseException:
            self.queue.shutdown(0)
            self.deliveries.close()
            self.pushes.close()
            raise
        self._thread: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._serve_started = threading.Event()
        self._closed = threading.Event()

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    def serve_forever(self) -> None:
        """Serve in this thread until `stop` is called from another thread."""
        self._serve_started.set()
        while not self._stop_requested.is_set():
            wasyncore.loop(timeout=0.2, map=self._map, use_poll=True, count=1)
        # Sockets are closed on this thread only: closing them under a running poll breaks it.
        wasyncore.dispatcher.close(self._server)
        tasks = self._server.task_dispatcher
        deadline = time.monotonic() + 5
        while (tasks.queue or tasks.active_count) and time.monotonic() < deadline:
            wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)
        tasks.shutdown(cancel_pending=True, timeout=5)
        wasyncore.close_all(self._map)
        self._closed.set()

    def start(self) -> WebhookServer:
        self._thread = threading.Thread(target=self.serve_forever, name="cidemo-webhook-http")
        self._thread.daemon = True
        self._thread.start()
        return self

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return self.queue.wait_idle(timeout)

    def stop(self, drain_timeout: float = 30.0) -> int:
        """Stop listening, drain the queue for up to `drain_timeout` s; return intents left."""
        if self._stop_requested.is_set():
            return 0
        self._stop_requested.set()
        if self._thread is not None or self._serve_started.is_set():
            self._closed.wait(timeout=15)
        else:
            wasyncore.close_all(self._map)
            self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        left = self.queue.shutdown(drain_timeout)
        if left:
            log.warning("%d queued intent(s) dropped at shutdown", left)
        self.deliveries.close()
        self.pushes.close()
        return left

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _GuardedServer(TcpWSGIServer):
    """Waitress' TCP server with a deadline per request and a cap on connections per peer."""

    def __init__(
        self, *args: Any, request_timeout: float, max_per_peer: int, **kwargs: Any
    ) -> None:
        self.request_timeout = request_timeout
        self.max_per_peer = max_per_peer
        self._capped: set[str] = set()  # peers refused since the last maintenance (one line each)
        super().__init__(*args, **kwargs)

    def handle_accept(self) -> None:
        try:
            accepted = self.accept()
            if accepted is None:
                return
            conn, addr = accepted
            self.set_socket_options(conn)
        except OSError:
            return
        peer = addr[0] if isinstance(addr, tuple) else addr
        held = sum(1 for c in self.active_channels.values() if c.addr and c.addr[0] == peer)
        if held >= self.max_per_peer:
            if peer not in self._capped:
                self._capped.add(peer)
                log.warning("peer %s holds %d connections: closing its new ones", peer, held)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            return
        self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        self._capped.clear()
        cutoff = now - self.request_timeout
        for channel in self.active_channels.values():
            # `requests` holds complete requests being answered; a partial one does not count
            if not channel.requests and channel.creation_time < cutoff:
                channel.will_close = True


_STATUS = {
    200: "200 OK",
    202: "202 Accepted",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    413: "413 Payload Too Large",
    415: "415 Unsupported Media Type",
    503: "503 Service Unavailable",
}


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def _decode(media: str, body: bytes) -> Any:
    if media == "application/x-www-form-urlencoded":
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise PayloadError("form body is not valid form-urlencoded UTF-8") from None
        values = form.get("payload", [])
        if len(values) != 1:
            raise PayloadError("form body needs exactly one 'payload' field")
        text = values[0]
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("body is not UTF-8") from None
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"body is not JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise PayloadError("body nests too deeply") from None


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        # int() of 4300+ digits raises ValueError, and its cost grows with the square of them
        raise PayloadError(f"body has a number of {len(text)} digits")
    return int(text)


def _describe(intent: Intent) -> str:
    if isinstance(intent, PreviewUp):
        fork = " (fork)" if intent.is_fork else ""
        return f"preview of PR #{intent.pr} at {intent.ref_sha[:12]}{fork}"
    if isinstance(intent, PreviewDown):
        return f"removal of PR #{intent.pr}'s preview"
    if isinstance(intent, StagingUp):
        return f"staging at {intent.sha[:12]}"
    if isinstance(intent, ProductionUp):
        return f"production at {intent.sha[:12]}"
    return f"nothing ({intent.reason})"


def _one_line(text: str) -> str:
    """Payload-derived text on a log line: one line, printable, bounded."""
    flat = " ".join(text.split())[:300]
    return "".join(ch if ch.isprintable() else "?" for ch in flat)
