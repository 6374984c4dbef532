"""Direct probes of a service from where the tool runs."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_answers(url: str, timeout: float = 3.0) -> bool:
    """True when an HTTP server answers `url` with anything below 500 (401/403 count)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False
