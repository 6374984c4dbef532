"""One Docker client per endpoint URL: unix://, ssh:// (system ssh), tcp:// with TLS."""

from __future__ import annotations

import threading
from pathlib import Path

import docker
import docker.errors
import docker.tls
import requests.exceptions

from cidemo_infra.errors import EngineError

# What a Docker call raises when the engine refuses or cannot be reached at all.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
API_VERSION = "1.41"  # Debian bookworm's docker.io 20.10; newer engines speak it too
_clients: dict[str, docker.DockerClient] = {}
_lock = threading.Lock()


def client_for(
    url: str,
    tls_dir: str | None = None,
    allow_plain_tcp: bool = False,
    node: str = "?",
    timeout: int = 120,
) -> docker.DockerClient:
    """A cached, checked client for `url`; plain tcp:// is refused unless explicitly allowed."""
    key = f"{url}|{tls_dir}"
    with _lock:
        if key in _clients:
            return _clients[key]
    tls: docker.tls.TLSConfig | bool = False
    scheme = url.split("://", 1)[0]
    if scheme == "tcp":
        if tls_dir:
            d = Path(tls_dir)
            tls = docker.tls.TLSConfig(
                client_cert=(str(d / "cert.pem"), str(d / "key.pem")),
                ca_cert=str(d / "ca.pem"),
                verify=True,
            )
        elif not allow_plain_tcp:
            raise EngineError(
                f"node {node}: refusing plain {url} without TLS; give a TLS "
                "directory or set docker.allow_plain_tcp"
            )
    elif scheme not in ("unix", "ssh"):
        raise EngineError(
            f"node {node}: unsupported Docker endpoint {url!r}; use unix://, "
            "ssh:// or tcp:// with TLS"
        )
    try:
        client = docker.DockerClient(
            base_url=url,
            version=API_VERSION,
            tls=tls,
            timeout=timeout,
            use_ssh_client=scheme == "ssh",
        )
        client.ping()
    except ENGINE_ERRORS as exc:
        raise EngineError(
            f"node {node}: Docker engine at {url} does not answer: {_short(exc)}"
        ) from None
    with _lock:
        _clients[key] = client
    return client


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) < 240 else text[:237] + "..."


def engine_error(node: str, action: str, exc: BaseException) -> EngineError:
    """One line naming the node and the action, from whatever the engine said."""
    explanation = getattr(exc, "explanation", None) or _short(exc)
    return EngineError(f"node {node}: {action}: {explanation}")
