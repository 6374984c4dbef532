"""The lab's fake metadata service (OpenStack and EC2 paths), on 169.254.169.254:80.

The lab controller writes /srv/metadata/<node address>/user_data for each node and
/srv/metadata/token, a value the test chose: every answer carries it in `X-Cidemo-Lab-Token`, and
/cidemo-lab/token returns it, so a check knows the answer came from here and from nowhere else.
"""

from __future__ import annotations

import http.server
from pathlib import Path

ROOT = Path("/srv/metadata")
USER_DATA = {"/openstack/latest/user_data", "/latest/user-data"}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        token = (ROOT / "token").read_text().strip() if (ROOT / "token").exists() else ""
        path = self.path.split("?", 1)[0]
        body: bytes | None = None
        if path == "/cidemo-lab/token":
            body = token.encode()
        elif path in USER_DATA:
            found = ROOT / self.client_address[0] / "user_data"
            body = found.read_bytes() if found.is_file() else None
        self.send_response(200 if body is not None else 404)
        self.send_header("X-Cidemo-Lab-Token", token)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body if body is not None else b"not found\n")


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("169.254.169.254", 80), Handler).serve_forever()
