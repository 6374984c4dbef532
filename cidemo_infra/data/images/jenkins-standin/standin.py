"""A STAND-IN for Jenkins, for tests where the jenkins/jenkins image cannot be fetched.

It only answers HTTP on 8080: /login and / with 200 and the header `X-Jenkins: standin`, other paths 404.
"""

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"<html><body><h1>cidemo Jenkins STAND-IN</h1><p>This is not Jenkins.</p></body></html>\n"


class Handler(BaseHTTPRequestHandler):
    server_version = "cidemo-jenkins-standin"

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        status = 200 if path in ("/", "/login") else 404
        body = BODY if status == 200 else b"not found\n"
        self.send_response(status)
        self.send_header("X-Jenkins", "standin")
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if self.client_address[0] == "127.0.0.1":
            return  # the health checks
        sys.stderr.write("[jenkins-standin] %s %s\n" % (self.address_string(), format % args))


def main() -> None:
    port = int(os.environ.get("HTTP_PORT", "8080"))
    server = ThreadingHTTPServer((os.environ.get("BIND_ADDRESS", "0.0.0.0"), port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stderr.write("[jenkins-standin] STAND-IN (not Jenkins) listening on :%d\n" % port)
    sys.stderr.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
