"""RecordingGitHub: a stand-in for GitHub's REST API in tests, NOT GitHub.

A threaded HTTP server on 127.0.0.1:0 that records every request (method, path, headers, JSON
body) and answers `POST /repos/<owner>/<repo>/statuses/<sha>` with 201, as GitHub does, and
`GET /repos/<owner>/<repo>/collaborators/<login>/permission` from `permissions` (login to
admin/maintain/write/read/none; a login not in it is not a collaborator: 404). It can be told to
fail the next N requests with a 5xx to exercise retries.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class RecordingGitHub:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.fail_next = 0
        self.fail_status = 502
        self.permissions: dict[str, str] = {}
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                with recorder._lock:
                    recorder.requests.append(
                        RecordedRequest("POST", self.path, dict(self.headers.items()), body)
                    )
                    failing = recorder.fail_next > 0
                    if failing:
                        recorder.fail_next -= 1
                if failing:
                    self._answer(recorder.fail_status, {"message": "Server Error"})
                elif "/statuses/" in self.path:
                    self._answer(201, {"id": len(recorder.requests), **(body or {})})
                else:
                    self._answer(404, {"message": "Not Found"})

            def do_GET(self) -> None:
                with recorder._lock:
                    recorder.requests.append(
                        RecordedRequest("GET", self.path, dict(self.headers.items()), None)
                    )
                    failing = recorder.fail_next > 0
                    if failing:
                        recorder.fail_next -= 1
                parts = self.path.split("/")
                # /repos/<owner>/<repo>/collaborators/<login>/permission
                if failing:
                    self._answer(recorder.fail_status, {"message": "Server Error"})
                elif len(parts) == 7 and parts[4] == "collaborators" and parts[6] == "permission":
                    permission = recorder.permissions.get(parts[5])
                    if permission is None:
                        self._answer(404, {"message": "Not Found"})
                    else:
                        self._answer(200, {"permission": permission, "user": {"login": parts[5]}})
                else:
                    self._answer(404, {"message": "Not Found"})

            def _answer(self, code: int, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def permission_checks(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/permission")]

    def statuses(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if "/statuses/" in r.path]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """The status requests once at least `count` arrived (or what arrived by `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.statuses()
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return self.statuses()

    def __enter__(self) -> RecordingGitHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
