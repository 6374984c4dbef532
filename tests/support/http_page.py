"""GET / of an environment by its host name, as a browser behind DNS would ask the router."""

from __future__ import annotations

import http.client
import json
from typing import Any


def page(address: str, port: int, host: str) -> tuple[int, Any]:
    """(status, JSON body or text); (0, the error) when nothing answers."""
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host, "Accept": "application/json"})
        response = conn.getresponse()
        raw = response.read().decode()
    except OSError as exc:
        return 0, str(exc)
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw
