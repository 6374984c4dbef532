"""An authenticated openstacksdk connection, from clouds.yaml only; failures become one line."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from keystoneauth1 import exceptions as ksa

from cidemo_infra.errors import CloudError

if TYPE_CHECKING:
    from openstack.connection import Connection

# The OpenStack target boots servers from images on networks: without these the cloud is useless.
REQUIRED_SERVICES = ("compute", "network", "image")
_SECRET_KEYS = ("password", "token", "application_credential_secret", "secret")


def connect(cloud: str, required: tuple[str, ...] = REQUIRED_SERVICES) -> Connection:
    """Connect to the clouds.yaml entry `cloud` and prove it: a token and the endpoints of the
    `required` service types.

    Credentials come only from clouds.yaml/secure.yaml (OS_CLIENT_CONFIG_FILE chooses the file);
    every failure is a `CloudError` naming the cloud and what failed, never a secret.
    """
    import openstack
    from openstack import exceptions as sdk

    try:
        conn = openstack.connect(cloud=cloud)
    except sdk.ConfigException as exc:
        raise CloudError(f"cloud '{cloud}': {_config_problem(exc)}") from None
    except ksa.ClientException as exc:
        raise CloudError(f"cloud '{cloud}': invalid auth settings: {exc}") from None
    auth = dict(conn.config.auth)
    secrets = secret_values(auth)
    auth_url = auth.get("auth_url", "?")
    try:
        conn.session.get_token()
        missing = [kind for kind in required if not _has_endpoint(conn, kind)]
    except ksa.Unauthorized:
        raise CloudError(
            f"cloud '{cloud}': authentication failed at {auth_url} (HTTP 401): the credentials "
            "in clouds.yaml were refused"
        ) from None
    except ksa.ConnectFailure as exc:
        raise CloudError(
            f"cloud '{cloud}': cannot reach the identity endpoint {auth_url}: "
            f"{_redact(_short(exc), secrets)}"
        ) from None
    except (ksa.ClientException, sdk.SDKException) as exc:
        raise CloudError(
            f"cloud '{cloud}': authentication at {auth_url} failed: {_redact(_short(exc), secrets)}"
        ) from None
    if missing:
        raise CloudError(
            f"cloud '{cloud}': the service catalog has no endpoint for {', '.join(missing)} "
            f"(needed: {', '.join(required)})"
        )
    return conn


@contextmanager
def cloud_errors(conn: Connection, doing: str) -> Iterator[None]:
    """Turn an API failure while `doing` something into one `CloudError` line, secrets removed."""
    from openstack import exceptions as sdk

    try:
        yield
    except (sdk.SDKException, ksa.ClientException) as exc:
        text = _redact(_short(exc), secret_values(conn.config.auth))
        raise CloudError(f"cloud '{conn.config.name}': {doing} failed: {text}") from None


def secret_values(auth: Mapping[str, Any]) -> list[str]:
    return [str(v) for k, v in auth.items() if v and any(s in k for s in _SECRET_KEYS)]


def redact(text: str, conn: Connection) -> str:
    return _redact(text, secret_values(conn.config.auth))


def _has_endpoint(conn: Connection, service_type: str) -> bool:
    try:
        return bool(conn.endpoint_for(service_type))
    except ksa.EndpointNotFound:
        return False


def _config_problem(exc: Exception) -> str:
    text = str(exc)
    if "was not found" in text:
        where = os.environ.get("OS_CLIENT_CONFIG_FILE")
        source = f"OS_CLIENT_CONFIG_FILE={where}" if where else "the clouds.yaml search path"
        return f"no such entry in clouds.yaml ({source})"
    return f"invalid clouds.yaml entry: {text}"


def _short(exc: Exception) -> str:
    """The first line of an exception, without urllib3's nested repr noise."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
