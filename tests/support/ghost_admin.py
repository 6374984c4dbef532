"""Ghost's Admin API as an integration calls it: a short-lived HS256 token from an Admin API key
(`<id>:<hex secret>`), sent as `Authorization: Ghost <token>` (Ghost's "Token authentication").
The requests go to the platform's router with the environment's host name, as a browser would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
from typing import Any

ACCEPT_VERSION = "v5.0"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def admin_token(key: str, now: float | None = None) -> str:
    """The JWT Ghost wants: header kid = key id, audience /admin/, at most 5 minutes valid."""
    key_id, _, secret = key.partition(":")
    issued = int(time.time() if now is None else now)
    header = {"alg": "HS256", "typ": "JWT", "kid": key_id}
    claims = {"iat": issued, "exp": issued + 300, "aud": "/admin/"}
    signing = b".".join(
        _b64(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims)
    )
    signature = hmac.new(bytes.fromhex(secret), signing, hashlib.sha256).digest()
    return (signing + b"." + _b64(signature)).decode()


def lexical(text: str) -> str:
    """A post body in Ghost 5's editor format (Lexical JSON): one paragraph of `text`.
    (`?source=html` needs the optional html-to-mobiledoc package, which the image leaves out.)"""
    node = {"detail": 0, "format": 0, "mode": "normal", "style": "", "text": text, "type": "text"}
    block = {"direction": "ltr", "format": "", "indent": 0, "version": 1}
    paragraph = {**block, "type": "paragraph", "children": [{**node, "version": 1}]}
    return json.dumps({"root": {**block, "type": "root", "children": [paragraph]}})


def request(
    port: int,
    host: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request through the router at 127.0.0.1:`port` for `host`; (status, JSON or text)."""
    sent = {"Host": host, "Accept-Version": ACCEPT_VERSION, **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Ghost {admin_token(key)}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read().decode(errors="replace")
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw
