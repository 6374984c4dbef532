"""One Docker client per endpoint URL: unix://, ssh:// (system ssh), tcp:// with TLS."""

from __future__ import annotations

import threading
from collections.abc import Mapping
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
            tls = tls_config(Path(tls_dir), node)
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
        # requests lets REQUESTS_CA_BUNDLE (and proxy variables) override the site's CA for every
        # request; an engine is verified against the site's CA and reached directly, nothing else.
        client.api.trust_env = False
        client.ping()
    except ENGINE_ERRORS as exc:
        raise EngineError(
            f"node {node}: Docker engine at {url} does not answer: {_short(exc)}"
        ) from None
    with _lock:
        _clients[key] = client
    return client


def unique_clients(clients: Mapping[str, docker.DockerClient]) -> dict[str, docker.DockerClient]:
    """One entry per daemon: several engine names can reach one daemon (clients are cached per
    URL), and a daemon listed twice would be read, counted or cleaned twice."""
    out: dict[str, docker.DockerClient] = {}
    for engine, client in clients.items():
        if all(client is not other for other in out.values()):
            out[engine] = client
    return out


def tls_config(folder: Path, node: str) -> docker.tls.TLSConfig:
    """Client TLS from `folder`: the site's PKI layout (client-cert.pem, client-key.pem) or the
    Docker CLI's (cert.pem, key.pem), with the CA in ca.pem; the engine's cert is verified."""
    for cert, key in (("client-cert.pem", "client-key.pem"), ("cert.pem", "key.pem")):
        if (folder / cert).is_file() and (folder / key).is_file():
            break
    else:
        raise EngineError(
            f"node {node}: no client certificate in {folder} (client-cert.pem + "
            "client-key.pem, or cert.pem + key.pem)"
        )
    if not (folder / "ca.pem").is_file():
        raise EngineError(f"node {node}: no CA certificate {folder / 'ca.pem'}")
    return docker.tls.TLSConfig(
        client_cert=(str(folder / cert), str(folder / key)),
        ca_cert=str(folder / "ca.pem"),
        verify=True,
    )


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) < 240 else text[:237] + "..."


def engine_error(node: str, action: str, exc: BaseException) -> EngineError:
    """One line naming the node and the action, from whatever the engine said."""
    explanation = getattr(exc, "explanation", None) or _short(exc)
    return EngineError(f"node {node}: {action}: {explanation}")
