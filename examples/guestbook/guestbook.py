"""A guestbook: the smallest app that shows which database an environment runs on.

GET / lists the rows of table `entries` (HTML, or JSON with `Accept: application/json`),
POST / adds one (form field `message`), GET /healthz answers 200 once the database answers.
Configured only from the environment: PORT, DB_HOST, DB_PORT, DB_USER, DB_NAME, and the
password from DB_PASS or, preferred, the file named by DB_PASS_FILE (a Swarm secret).
Standard library and python3-pymysql only (Debian packages).
"""

from __future__ import annotations

import html
import json
import os
import signal
import sys
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pymysql

VERSION = os.environ.get("APP_VERSION", "dev")
MAX_MESSAGE = 500
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " id INT AUTO_INCREMENT PRIMARY KEY,"
    " message VARCHAR(500) NOT NULL,"
    " created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
)


def password() -> str:
    path = os.environ.get("DB_PASS_FILE")
    if path:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    return os.environ.get("DB_PASS", "")


def connect() -> pymysql.connections.Connection:
    return pymysql.connect(
        host=os.environ.get("DB_HOST", "127.0.0.1"),
        port=int(os.environ.get("DB_PORT", "3306")),
        user=os.environ.get("DB_USER", "guestbook"),
        password=password(),
        database=os.environ.get("DB_NAME", "guestbook"),
        autocommit=True,
        connect_timeout=3,
        read_timeout=10,
        write_timeout=10,
        charset="utf8mb4",
    )


def entries() -> list[dict[str, Any]]:
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(SCHEMA)
            cur.execute("SELECT id, message, created FROM entries ORDER BY id")
            return [{"id": i, "message": m, "created": str(c)} for i, m, c in cur.fetchall()]
    finally:
        conn.close()


def add(message: str) -> None:
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(SCHEMA)
            cur.execute("INSERT INTO entries (message) VALUES (%s)", (message,))
    finally:
        conn.close()


def render_page(rows: list[dict[str, Any]]) -> str:
    """The HTML page of the entries (each message escaped)."""
    items = "".join(f"<li>{html.escape(r['message'])}</li>" for r in rows)
    return (
        f"<!doctype html><title>guestbook {html.escape(VERSION)}</title>"
        f"<h1>guestbook {html.escape(VERSION)}</h1><ul>{items}</ul>"
        '<form method="post"><input name="message"><button>add</button></form>\n'
    )


class Handler(BaseHTTPRequestHandler):
    server_version = "guestbook/" + VERSION

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            try:
                entries()
            except pymysql.MySQLError as exc:
                self._send(503, "text/plain", f"database: {exc.args[-1]}\n")
                return
            self._send(200, "text/plain", "ok\n")
        elif path == "/":
            try:
                rows = entries()
            except pymysql.MySQLError as exc:
                self._send(503, "text/plain", f"database: {exc.args[-1]}\n")
                return
            if "application/json" in self.headers.get("Accept", ""):
                body = {"version": VERSION, "database": os.environ.get("DB_NAME"), "entries": rows}
                self._send(200, "application/json", json.dumps(body) + "\n")
            else:
                self._send(200, "text/html; charset=utf-8", render_page(rows))
        else:
            self._send(404, "text/plain", "not found\n")

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/":
            self._send(404, "text/plain", "not found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > 4 * MAX_MESSAGE:
            self._send(413, "text/plain", "too long\n")
            return
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        message = (form.get("message") or [""])[0].strip()[:MAX_MESSAGE]
        if not message:
            self._send(400, "text/plain", "message is empty\n")
            return
        try:
            add(message)
        except pymysql.MySQLError as exc:
            self._send(503, "text/plain", f"database: {exc.args[-1]}\n")
            return
        self.send_response(303)
        self.send_header("Location", "/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, code: int, kind: str, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-App-Version", VERSION)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("guestbook: " + (format % args) + "\n")


def check() -> int:
    """The container's health check: /healthz on this container answers 200."""
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8080')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        return check()
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stderr.write(
        f"guestbook {VERSION}: listening on :{port}, database {os.environ.get('DB_NAME')}\n"
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
