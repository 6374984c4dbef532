"""GitHub's `X-Hub-Signature-256` header: `sha256=` and the hex HMAC-SHA256 of the raw body."""

from __future__ import annotations

import hashlib
import hmac
import re

HEADER = "X-Hub-Signature-256"
PREFIX = "sha256="
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sign(secret: str | bytes, body: bytes) -> str:
    """The header value GitHub sends for `body` (tests and tools use it to sign requests)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def is_valid_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """True only for a well-formed header that matches; missing or malformed is simply invalid."""
    if not secret or not header or not header.startswith(PREFIX):
        return False
    digest = header[len(PREFIX) :]
    # GitHub sends lowercase hex; anything else is not a signature it made.
    if not _HEX64.match(digest):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.encode())
