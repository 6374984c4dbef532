"""The Deis v1 client against request/response fixtures, NOT against Deis.

Deis v1 (end of life since 2017) cannot run here. `DeisV1FixtureServer` is a local HTTP server
that answers only the exchanges in tests/data/deis/*.json, each written from the Deis v1.12
controller API documentation (`docs/reference/api-v1.7.rst`, named in each file's `doc`), and
answers 401 to a wrong token as Django REST framework's token authentication does. It checks the
method, path, JSON body and `Authorization: token <t>` header of every request it receives.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cidemo_infra.platforms.deis import (
    DeisApp,
    DeisClient,
    DeisError,
    preview_app,
    production_app,
    staging_app,
    validate_app_id,
)
from tests.conftest import REPO

pytestmark = pytest.mark.unit

FIXTURES = sorted((REPO / "tests" / "data" / "deis").glob("*.json"))
TOKEN = "abc123"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    body: Any
    authorization: str | None


class DeisV1FixtureServer:
    """A stand-in for a Deis v1 controller that replays documented exchanges; nothing more."""

    def __init__(self) -> None:
        self.exchanges = [json.loads(p.read_text()) for p in FIXTURES]
        self.seen: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                auth = self.headers.get("Authorization")
                server.seen.append(Seen(self.command, self.path, body, auth))
                if auth != f"token {TOKEN}":
                    self._answer(401, {}, {"detail": "Invalid token."})
                    return
                for exchange in server.exchanges:
                    req = exchange["request"]
                    if (req["method"], req["path"], req.get("body")) == (
                        self.command,
                        self.path,
                        body,
                    ):
                        resp = exchange["response"]
                        self._answer(resp["status"], resp["headers"], resp.get("body"))
                        return
                self._answer(404, {}, {"detail": "Not found"})

            do_GET = do_POST = do_DELETE = _serve

            def _answer(self, code: int, headers: dict[str, str], body: Any) -> None:
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def controller() -> Iterator[DeisV1FixtureServer]:
    fake = DeisV1FixtureServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture
def client(controller: DeisV1FixtureServer) -> DeisClient:
    return DeisClient(controller.url, TOKEN, read_timeout=5)


def test_fixtures_cite_the_documentation() -> None:
    assert len(FIXTURES) >= 8
    for path in FIXTURES:
        doc = json.loads(path.read_text())["doc"]
        assert doc.startswith("deis/deis@v1.12.2:docs/reference/api-v1.7.rst ("), path.name


def test_create_app(client: DeisClient, controller: DeisV1FixtureServer) -> None:
    app = client.create_app("pr-11-ghost")
    assert app == DeisApp(
        id="pr-11-ghost",
        owner="jenkins",
        url="pr-11-ghost.ci-demo.example.com",
        uuid="de1bf5b5-4a72-4f94-a10c-d2a3741cdf75",
    )
    assert controller.seen == [Seen("POST", "/v1/apps/", {"id": "pr-11-ghost"}, "token abc123")]
    assert client.api_version == "1.7"


def test_create_taken_id_reports_the_controllers_reason(client: DeisClient) -> None:
    with pytest.raises(DeisError) as err:
        client.create_app("stage-ghost")
    assert err.value.status == 400
    assert str(err.value) == (
        "create app stage-ghost: HTTP 400: id: App with this id already exists."
    )


def test_get_app_and_missing_app(client: DeisClient) -> None:
    app = client.get_app("pr-11-ghost")
    assert app is not None and app.url == "pr-11-ghost.ci-demo.example.com"
    assert client.get_app("pr-99-ghost") is None


def test_ensure_app_creates_only_when_missing(
    client: DeisClient, controller: DeisV1FixtureServer
) -> None:
    app, created = client.ensure_app("stage-ghost")
    assert (app.id, created) == ("stage-ghost", False)
    assert [s.method for s in controller.seen] == ["GET"]


def test_destroy_needs_the_app_id_as_confirmation(
    client: DeisClient, controller: DeisV1FixtureServer
) -> None:
    for wrong in (None, "", "yes", "pr-11", "PR-11-ghost"):
        with pytest.raises(DeisError, match="--confirm=pr-11-ghost"):
            client.destroy_app("pr-11-ghost", confirm=wrong)
    assert controller.seen == []
    client.destroy_app("pr-11-ghost", confirm="pr-11-ghost")
    assert controller.seen == [Seen("DELETE", "/v1/apps/pr-11-ghost/", None, "token abc123")]


def test_set_and_unset_config(client: DeisClient, controller: DeisV1FixtureServer) -> None:
    config = client.set_config(
        "pr-11-ghost",
        {"NODE_ENV": "production", "URL": "http://pr-11-ghost.ci-demo.example.com"},
    )
    assert config.release == 3
    assert config.keys == ("DEIS_APP", "DEIS_RELEASE", "NODE_ENV", "URL")
    unset = client.set_config("pr-11-ghost", {"S3_ACCESS_KEY": None})
    assert unset.release == 4 and "S3_ACCESS_KEY" not in unset.keys
    assert controller.seen[-1].body == {"values": {"S3_ACCESS_KEY": None}}


def test_config_values_never_appear_in_errors(client: DeisClient) -> None:
    with pytest.raises(DeisError) as err:
        client.set_config("pr-11-ghost", {"S3_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG"})
    assert "wJalrXUtnFEMI" not in str(err.value)
    assert "S3_ACCESS_KEY" in str(err.value)


@pytest.mark.parametrize("key", ["1ABC", "S3-KEY", "A B", ""])
def test_bad_config_keys_are_refused_before_sending(
    client: DeisClient, controller: DeisV1FixtureServer, key: str
) -> None:
    with pytest.raises(DeisError, match="not an environment variable name"):
        client.set_config("pr-11-ghost", {key: "x"})
    assert controller.seen == []


def test_deploy_image_creates_a_build(client: DeisClient, controller: DeisV1FixtureServer) -> None:
    image = "registry.ci-demo.example.com:5000/ghost:6dcb09b5b578"
    build = client.deploy_image("pr-11-ghost", image)
    assert (build.image, build.release) == (image, 5)
    assert build.uuid == "202d8e4b-600e-4425-a85c-ffc7ea607f61"
    assert controller.seen[-1].path == "/v1/apps/pr-11-ghost/builds/"


def test_wrong_token_is_reported_without_the_token(controller: DeisV1FixtureServer) -> None:
    client = DeisClient(controller.url, "not-the-token")
    with pytest.raises(DeisError) as err:
        client.get_app("pr-11-ghost")
    assert err.value.status == 401
    assert "deis login" in str(err.value) and "not-the-token" not in str(err.value)
    assert "not-the-token" not in repr(client)


def test_unreachable_controller_is_one_clear_error() -> None:
    client = DeisClient("http://127.0.0.1:9", TOKEN, connect_timeout=1, retries=0)
    with pytest.raises(DeisError, match=r"read app pr-11-ghost: controller .* unreachable"):
        client.get_app("pr-11-ghost")


def test_app_naming() -> None:
    assert preview_app(11, "ghost") == "pr-11-ghost"
    assert staging_app("ghost") == "stage-ghost"
    assert production_app("ghost") == "ghost"


@pytest.mark.parametrize(
    "bad", ["PR-11-ghost", "pr_11_ghost", "pr 11", "", "ghost.app", "deis", "a" * 65]
)
def test_invalid_app_ids_are_refused(bad: str) -> None:
    with pytest.raises(DeisError, match="app id"):
        validate_app_id(bad)


def test_invalid_app_id_is_refused_before_any_request(
    client: DeisClient, controller: DeisV1FixtureServer
) -> None:
    with pytest.raises(DeisError):
        client.create_app("PR-11-ghost")
    with pytest.raises(DeisError):
        preview_app(0, "ghost")
    assert controller.seen == []
