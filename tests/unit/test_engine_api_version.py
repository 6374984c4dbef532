"""The Engine API version is negotiated, so Docker Engine 29 (which refuses clients below API 1.44)
works as well as the 20.10 engine here (API 1.41). Engine 29 cannot be installed on this machine:
tests/support/engine29_standin.py answers as it does (version check, error bodies, ping)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from cidemo_infra.engines import API_NEWEST, API_OLDEST, client_for, negotiate
from cidemo_infra.errors import EngineError
from tests.support.engine29_standin import Engine29StandIn, too_old_message

pytestmark = pytest.mark.unit


@pytest.fixture
def engine29(tmp_path: Path) -> Iterator[Engine29StandIn]:
    with Engine29StandIn(tmp_path / "engine29.sock") as standin:
        yield standin


def _site(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(f"name: e29\ntarget: local\nengines:\n  local:\n    url: {url}\n")
    return path


def test_a_client_pinned_to_1_41_is_refused_as_engine_29_refuses_it(engine29) -> None:
    """What engines.py did before: DockerClient(version="1.41") and a ping."""
    pinned = docker.DockerClient(base_url=engine29.url, version="1.41")
    with pytest.raises(docker.errors.APIError) as raised:
        pinned.ping()
    assert raised.value.status_code == 400
    assert raised.value.response.json() == {"message": too_old_message("1.41")}
    assert raised.value.explanation == (
        "client version 1.41 is too old. Minimum supported API version is 1.44, please upgrade "
        "your client to a newer version"
    )


def test_client_for_speaks_1_44_to_engine_29(engine29) -> None:
    client = client_for(engine29.url, node="deis-1")
    assert client.api.api_version == "1.44"
    assert client.api.containers(all=True) == []
    method, first = engine29.requests[0]
    assert (method, first) == ("GET", "/version")  # unversioned: every engine answers it
    versioned = [path for _, path in engine29.requests[1:]]
    assert versioned and all(path.startswith("/v1.44/") for path in versioned)


def test_cidemo_status_runs_against_engine_29(engine29, cidemo, tmp_path: Path) -> None:
    result = cidemo(
        "status",
        "--json",
        "--site",
        str(_site(tmp_path, engine29.url)),
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result.rc == 0, result.err
    assert json.loads(result.out) == {"containers": [], "environments": None}
    assert any(p.startswith("/v1.44/containers/json") for _, p in engine29.requests)
    assert not [p for _, p in engine29.requests if p.startswith("/v1.4") and "/v1.44/" not in p]


def test_an_engine_with_no_version_in_common_is_named_with_both_ranges(
    tmp_path: Path, cidemo
) -> None:
    """A future engine whose oldest version is past cidemo's newest: one line, exit 1."""
    with Engine29StandIn(
        tmp_path / "future.sock", api_version="1.60", min_api_version="1.45", engine_version="40.0"
    ) as future:
        result = cidemo(
            "status",
            "--site",
            str(_site(tmp_path, future.url)),
            "--state-dir",
            str(tmp_path / "state"),
        )
        assert [p for _, p in future.requests] == ["/version"]  # nothing asked at a refused version
    assert result.rc == 1
    assert result.err.strip().splitlines() == [
        f"cidemo: error: node deis-1: Docker engine at {future.url} (version 40.0) speaks Engine "
        f"API 1.45 to 1.60; cidemo speaks {API_OLDEST} to {API_NEWEST}"
    ]


@pytest.mark.parametrize(
    ("engine", "newest", "oldest", "chosen"),
    [
        ("20.10 (Debian bookworm)", "1.41", "1.12", "1.41"),
        ("24.0", "1.43", "1.12", "1.43"),
        ("28.5", "1.51", "1.24", "1.44"),
        ("29.0", "1.52", "1.44", "1.44"),
    ],
)
def test_negotiate_picks_the_newest_version_both_speak(
    engine: str, newest: str, oldest: str, chosen: str
) -> None:
    answered = {"Version": engine, "ApiVersion": newest, "MinAPIVersion": oldest}
    assert negotiate(answered, "unix:///x.sock") == chosen


@pytest.mark.parametrize(
    ("answered", "says"),
    [
        (
            {"Version": "19.03", "ApiVersion": "1.40", "MinAPIVersion": "1.12"},
            "(version 19.03) speaks Engine API 1.12 to 1.40; cidemo speaks 1.41 to 1.44",
        ),
        ({"Version": "?"}, "did not say its API version"),
    ],
)
def test_negotiate_refuses_an_engine_it_shares_no_version_with(
    answered: dict[str, str], says: str
) -> None:
    with pytest.raises(EngineError) as raised:
        negotiate(answered, "unix:///x.sock", node="deis-2")
    assert str(raised.value).startswith("node deis-2: Docker engine at unix:///x.sock ")
    assert str(raised.value).endswith(says)
