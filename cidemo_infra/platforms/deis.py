"""A small client for the Deis v1 controller REST API (v1.12 era, controller API v1.7).

Only what the per-PR workflow needs: create, inspect and destroy an app, set its config, and
deploy an image as a build. Endpoints and payloads follow
`deis/deis@v1.12.2:docs/reference/api-v1.7.rst` (the "Controller API v1.7" page); app ids
follow `controller/api/models.py` (`^[a-z0-9-]+$`, at most 64 characters, `deis` reserved).

Config values are secrets more often than not: they are sent, never logged or put in errors.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from urllib3.util.retry import Retry

from cidemo_infra.errors import CidemoError

APP_ID = re.compile(r"^[a-z0-9-]+$")
APP_ID_MAX = 64
RESERVED_APP_IDS = frozenset({"deis"})
CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SUPPORTED_API_MAJOR = "1"

log = logging.getLogger("cidemo.envs.deis")


class DeisError(CidemoError):
    """The controller refused a request or could not be reached; names the app and the action."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class DeisNotFound(DeisError):
    pass


def validate_app_id(app_id: str) -> str:
    """`app_id` if the controller would accept it, else DeisError saying what is valid."""
    if not APP_ID.match(app_id) or len(app_id) > APP_ID_MAX:
        raise DeisError(
            f"app id '{app_id}' is invalid: Deis v1 app ids match ^[a-z0-9-]+$ "
            f"(lowercase letters, digits, hyphens; at most {APP_ID_MAX} characters)"
        )
    if app_id in RESERVED_APP_IDS:
        raise DeisError(f"app id '{app_id}' is reserved by Deis")
    return app_id


def preview_app(pr: int, app: str) -> str:
    """`pr-<n>-<app>`: the 2015 "PR-11-ghost", lowercased as the controller requires."""
    if pr < 1:
        raise DeisError(f"pull request number {pr} is not positive")
    return validate_app_id(f"pr-{pr}-{app}")


def staging_app(app: str) -> str:
    return validate_app_id(f"stage-{app}")


def production_app(app: str) -> str:
    return validate_app_id(app)


@dataclass(frozen=True)
class DeisApp:
    id: str
    owner: str
    url: str
    uuid: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeisApp:
        return cls(
            id=str(data["id"]),
            owner=str(data.get("owner", "")),
            url=str(data.get("url", "")),
            uuid=str(data.get("uuid", "")),
        )


@dataclass(frozen=True)
class DeisConfig:
    app: str
    keys: tuple[str, ...]
    release: int | None = None


@dataclass(frozen=True)
class DeisBuild:
    app: str
    image: str
    uuid: str
    release: int | None = None


@dataclass
class _Reply:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


class DeisClient:
    """Talks to `http(s)://deis.<domain>` with `Authorization: token <t>` (from `deis login`)."""

    def __init__(
        self,
        controller: str,
        token: str,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retries: int = 2,
    ) -> None:
        if not controller.startswith(("https://", "http://")):
            raise DeisError(f"controller URL '{controller}' must start with https:// or http://")
        if not token:
            raise DeisError("no Deis token: log in with `deis login` or pass the API token")
        self.controller = controller.rstrip("/")
        self._token = token
        self.api_version: str | None = None
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            # Only idempotent calls are retried: a repeated POST could create a second release.
            retries=Retry(
                total=retries,
                backoff_factor=0.5,
                status_forcelist=(502, 503, 504),
                allowed_methods=frozenset({"GET", "DELETE"}),
                raise_on_status=False,
            ),
        )

    def __repr__(self) -> str:
        return f"DeisClient(controller={self.controller!r})"

    def create_app(self, app_id: str) -> DeisApp:
        """`POST /v1/apps/` {"id"} (api-v1.7.rst, "Create an Application")."""
        validate_app_id(app_id)
        reply = self._call("POST", "/v1/apps/", {"id": app_id}, f"create app {app_id}")
        return DeisApp.from_json(reply.body)

    def get_app(self, app_id: str) -> DeisApp | None:
        """`GET /v1/apps/<id>/` (api-v1.7.rst, "List Application Details"); None if absent."""
        validate_app_id(app_id)
        try:
            reply = self._call("GET", f"/v1/apps/{app_id}/", None, f"read app {app_id}")
        except DeisNotFound:
            return None
        return DeisApp.from_json(reply.body)

    def ensure_app(self, app_id: str) -> tuple[DeisApp, bool]:
        """The app, created if missing; the flag says whether it was created now."""
        existing = self.get_app(app_id)
        if existing is not None:
            return existing, False
        return self.create_app(app_id), True

    def destroy_app(self, app_id: str, confirm: str | None) -> None:
        """`DELETE /v1/apps/<id>/` (api-v1.7.rst, "Destroy an Application").

        Like `deis apps:destroy --app=<id> --confirm=<id>`: refused unless `confirm` is the id.
        """
        validate_app_id(app_id)
        if confirm != app_id:
            raise DeisError(
                f"refusing to destroy app '{app_id}': confirm with the app id itself "
                f"(deis apps:destroy --app={app_id} --confirm={app_id})"
            )
        self._call("DELETE", f"/v1/apps/{app_id}/", None, f"destroy app {app_id}")

    def set_config(self, app_id: str, values: Mapping[str, str | None]) -> DeisConfig:
        """`POST /v1/apps/<id>/config/` {"values"} (api-v1.7.rst, "Create new Config" and
        "Unset Config Variable": a None value unsets the key). Creates a new release."""
        validate_app_id(app_id)
        if not values:
            raise DeisError(f"config for app '{app_id}': no values given")
        for key, value in values.items():
            if not CONFIG_KEY.match(key):
                raise DeisError(
                    f"config for app '{app_id}': key '{key}' is not an environment variable name"
                )
            if value is not None and not isinstance(value, str):
                raise DeisError(f"config for app '{app_id}': value of {key} must be a string")
        reply = self._call(
            "POST",
            f"/v1/apps/{app_id}/config/",
            {"values": dict(values)},
            f"set config {', '.join(sorted(values))} on {app_id}",
        )
        keys = tuple(sorted((reply.body or {}).get("values", {})))
        return DeisConfig(app_id, keys, _release(reply.headers))

    def deploy_image(self, app_id: str, image: str) -> DeisBuild:
        """`POST /v1/apps/<id>/builds/` {"image"} (api-v1.7.rst, "Create Application Build"),
        what `deis pull <image>` does: a new build and release from a registry image."""
        validate_app_id(app_id)
        if not image or any(ch.isspace() for ch in image):
            raise DeisError(f"deploy to {app_id}: '{image}' is not an image reference")
        reply = self._call(
            "POST", f"/v1/apps/{app_id}/builds/", {"image": image}, f"deploy {image} to {app_id}"
        )
        body = reply.body or {}
        return DeisBuild(
            app_id,
            str(body.get("image", image)),
            str(body.get("uuid", "")),
            _release(reply.headers),
        )

    def _call(self, method: str, path: str, payload: Any, what: str) -> _Reply:
        headers = {
            "Authorization": f"token {self._token}",
            "Accept": "application/json",
            "User-Agent": "cidemo-infra",
        }
        body = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(payload).encode()
        try:
            response = self._http.request(
                method, self.controller + path, body=body, headers=headers
            )
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DeisError(
                f"{what}: controller {self.controller} unreachable ({reason})"
            ) from None
        self._note_version(response.headers)
        data: Any = None
        if response.data:
            try:
                data = json.loads(response.data)
            except ValueError:
                data = response.data.decode(errors="replace")[:200]
        if response.status == 404:
            raise DeisNotFound(f"{what}: not found", 404)
        if response.status == 401:
            raise DeisError(f"{what}: the token was refused (401); run `deis login` again", 401)
        if not 200 <= response.status < 300:
            raise DeisError(f"{what}: HTTP {response.status}: {_detail(data)}", response.status)
        log.debug("%s: HTTP %d", what, response.status)
        return _Reply(response.status, data, response.headers)

    def _note_version(self, headers: Mapping[str, str]) -> None:
        version = headers.get("DEIS_API_VERSION")
        if version and version != self.api_version:
            self.api_version = version
            if version.split(".")[0] != SUPPORTED_API_MAJOR:
                log.warning("controller speaks API %s; this client knows v1", version)


def _release(headers: Mapping[str, str]) -> int | None:
    value = headers.get("X-Deis-Release")
    return int(value) if value and value.isdigit() else None


def _detail(data: Any) -> str:
    """The controller's reason: `{"detail": ...}` or field errors like `{"id": ["..."]}`."""
    if isinstance(data, dict):
        if "detail" in data:
            return str(data["detail"])
        parts = [
            f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in data.items()
        ]
        return "; ".join(parts)[:300]
    return str(data or "no detail")[:300]
