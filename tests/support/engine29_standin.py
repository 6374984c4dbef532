"""Engine29StandIn: a stand-in for Docker Engine 29's API version check, NOT a Docker engine.

Docker Engine 29 cannot be installed here (Debian's docker.io is 20.10, API 1.41). This HTTP server
on a unix socket answers as Engine 29.0 does, from moby's daemon/server (tag docker-v29.0.0):
`middleware/version.go` checks the version in the path before any handler runs, and
`server.go` writes the refusal as JSON (plain text below 1.24):

- `/vX.Y/...` with X.Y below MinAPIVersion (1.44): 400, `{"message":"client version X.Y is too old.
  Minimum supported API version is 1.44, please upgrade your client to a newer version"}`;
  above ApiVersion (1.52): 400, "client version X.Y is too new. Maximum supported API version is
  1.52"; every answer that passes the check carries `Api-Version`, `Ostype` and `Server`;
- `/_ping` (GET, HEAD) and `/version`, with or without a version: what Engine 29 answers;
- `/containers/json` and `/networks`: `[]`, as an engine with nothing on it;
- anything else: 404 `{"message":"page not found"}`.

Every request is recorded (method, path) so tests can say what a client asked.
"""

from __future__ import annotations

import contextlib
import json
import re
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

ENGINE_VERSION = "29.0.0"
API_VERSION = "1.52"  # config.MaxAPIVersion of docker-v29.0.0
MIN_API_VERSION = "1.44"  # config.defaultMinAPIVersion of docker-v29.0.0
_VERSIONED = re.compile(r"^/v(?P<version>[0-9.]+)(?P<rest>/.*)$")


def _less(a: str, b: str) -> bool:
    """moby's versions.LessThan: dot-separated numbers compared one by one."""
    pa, pb = [int(x or 0) for x in a.split(".")], [int(x or 0) for x in b.split(".")]
    width = max(len(pa), len(pb))
    return pa + [0] * (width - len(pa)) < pb + [0] * (width - len(pb))


def too_old_message(version: str, minimum: str = MIN_API_VERSION) -> str:
    return (
        f"client version {version} is too old. Minimum supported API version is {minimum}, "
        "please upgrade your client to a newer version"
    )


class Engine29StandIn:
    """Serve on `socket_path` (a thread) until `close()`; `url` is the unix:// endpoint."""

    def __init__(
        self,
        socket_path: Path,
        api_version: str = API_VERSION,
        min_api_version: str = MIN_API_VERSION,
        engine_version: str = ENGINE_VERSION,
    ) -> None:
        self.socket_path = socket_path
        self.url = f"unix://{socket_path}"
        self.api_version = api_version
        self.min_api_version = min_api_version
        self.engine_version = engine_version
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as dockerd

            def do_GET(self) -> None:
                standin._serve(self, "GET")

            def do_HEAD(self) -> None:
                standin._serve(self, "HEAD")

            def do_POST(self) -> None:
                standin._serve(self, "POST")

            def do_DELETE(self) -> None:
                standin._serve(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test asserts on `requests`; a unix peer has no address to log

        socket_path.unlink(missing_ok=True)
        self._server = socketserver.ThreadingUnixStreamServer(str(socket_path), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> Engine29StandIn:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def version_document(self) -> dict[str, Any]:
        """GET /version's body (types.Version); values that are not versions are the stand-in's."""
        details = {
            "ApiVersion": self.api_version,
            "MinAPIVersion": self.min_api_version,
            "Os": "linux",
            "Arch": "amd64",
            "GitCommit": "standin",
            "GoVersion": "go1.25.4",
            "KernelVersion": "standin",
            "Experimental": "false",
            "BuildTime": "2025-11-10T00:00:00.000000000+00:00",
        }
        return {
            "Platform": {"Name": "Docker Engine 29 STAND-IN (not Docker)"},
            "Components": [{"Name": "Engine", "Version": self.engine_version, "Details": details}],
            "Version": self.engine_version,
            **{k: details[k] for k in details if k != "Experimental"},
        }

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self.requests.append((method, handler.path))
        path = handler.path.split("?", 1)[0]
        match = _VERSIONED.match(path)
        version, route = (match["version"], match["rest"]) if match else ("", path)
        known = {
            ("GET", "/_ping"),
            ("HEAD", "/_ping"),
            ("GET", "/version"),
            ("GET", "/containers/json"),
            ("GET", "/networks"),
        }
        if (method, route) not in known:
            _json(handler, 404, {"message": "page not found"})
            return
        # the version middleware: every matched route, before its handler
        headers = {
            "Server": f"Docker/{self.engine_version} (linux)",
            "Api-Version": self.api_version,
            "Ostype": "linux",
        }
        checked = version or self.api_version
        refusal = ""
        if _less(checked, self.min_api_version):
            refusal = too_old_message(checked, self.min_api_version)
        elif _less(self.api_version, checked):
            refusal = (
                f"client version {checked} is too new. "
                f"Maximum supported API version is {self.api_version}"
            )
        if refusal:
            if version and _less(version, "1.24"):
                _text(handler, 400, refusal + "\n", headers)
            else:
                _json(handler, 400, {"message": refusal}, headers)
        elif route == "/_ping":
            ping = {
                **headers,
                "Cache-Control": "no-cache, no-store, must-revalidate",
                "Pragma": "no-cache",
                "Builder-Version": "2",
                "Swarm": "inactive",
            }
            _text(handler, 200, "" if method == "HEAD" else "OK", ping)
        elif route == "/version":
            _json(handler, 200, self.version_document(), headers)
        else:
            _json(handler, 200, [], headers)


def _json(
    handler: BaseHTTPRequestHandler, code: int, data: Any, headers: dict[str, str] | None = None
) -> None:
    # Go's json.Encoder: compact, one trailing newline
    _send(
        handler, code, json.dumps(data, separators=(",", ":")) + "\n", "application/json", headers
    )


def _text(
    handler: BaseHTTPRequestHandler, code: int, body: str, headers: dict[str, str] | None = None
) -> None:
    _send(handler, code, body, "text/plain; charset=utf-8", headers)


def _send(
    handler: BaseHTTPRequestHandler,
    code: int,
    body: str,
    content_type: str,
    headers: dict[str, str] | None,
) -> None:
    raw = body.encode()
    handler.send_response(code)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", content_type)
    if content_type.startswith("text/plain") and code >= 400:
        handler.send_header("X-Content-Type-Options", "nosniff")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(raw)


if __name__ == "__main__":
    # By hand: python -m tests.support.engine29_standin /tmp/engine29.sock
    where = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/engine29-standin.sock")
    with Engine29StandIn(where) as standin:
        print(f"Docker Engine 29 STAND-IN on {standin.url}; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
