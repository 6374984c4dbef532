"""One Docker client per endpoint URL: unix://, ssh:// (system ssh), tcp:// with TLS, each speaking
the newest Engine API version both it and the engine know."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
import docker.utils
import requests.exceptions

from cidemo_infra.errors import EngineError

# What a Docker call raises when the engine refuses or cannot be reached at all.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
# The Engine API versions this code speaks. 1.41: Debian bookworm's docker.io 20.10, the engine the
# tests run on. 1.44: the oldest Docker Engine 29 accepts ("client version 1.41 is too old");
# 1.42-1.44 change nothing the code calls or reads. Each engine gets the newest of its own
# versions up to API_NEWEST, as the Docker CLI negotiates.
API_OLDEST = "1.41"
API_NEWEST = "1.44"
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
    client = negotiated_client(url, tls=tls, timeout=timeout, node=node)
    with _lock:
        _clients[key] = client
    return client


def negotiated_client(
    url: str, tls: docker.tls.TLSConfig | bool = False, timeout: int = 120, node: str = "?"
) -> docker.DockerClient:
    """A new client for `url` at the API version `negotiate` picks from the engine's unversioned
    GET /version, checked with a ping at that version; EngineError when it cannot be had."""

    def connect(version: str) -> docker.DockerClient:
        client = docker.DockerClient(
            base_url=url,
            version=version,
            tls=tls,
            timeout=timeout,
            use_ssh_client=url.startswith("ssh://"),
        )
        # requests lets REQUESTS_CA_BUNDLE (and proxy variables) override the site's CA for every
        # request; an engine is verified against the site's CA and reached directly, nothing else.
        client.api.trust_env = False
        return client

    try:
        probe = connect(API_NEWEST)
        try:
            answered = probe.api.version(api_version=False)
        finally:
            probe.close()
        client = connect(negotiate(answered, url, node))
        client.ping()
    except ENGINE_ERRORS as exc:
        raise EngineError(
            f"node {node}: Docker engine at {url} does not answer: {_short(exc)}"
        ) from None
    return client


def negotiate(answered: Mapping[str, Any], url: str, node: str = "?") -> str:
    """The API version to speak with an engine whose GET /version said `answered`: its newest
    (ApiVersion), at most API_NEWEST; EngineError when its range (down to MinAPIVersion) and
    API_OLDEST..API_NEWEST do not meet."""
    newest = str(answered.get("ApiVersion") or "")
    oldest = str(answered.get("MinAPIVersion") or newest)
    if not newest:
        raise EngineError(f"node {node}: Docker engine at {url} did not say its API version")
    chosen = API_NEWEST if docker.utils.version_lt(API_NEWEST, newest) else newest
    if docker.utils.version_lt(chosen, oldest) or docker.utils.version_lt(chosen, API_OLDEST):
        raise EngineError(
            f"node {node}: Docker engine at {url} (version {answered.get('Version', '?')}) "
            f"speaks Engine API {oldest} to {newest}; cidemo speaks {API_OLDEST} to {API_NEWEST}"
        )
    return chosen


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
