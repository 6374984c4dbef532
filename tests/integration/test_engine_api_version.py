"""The negotiated Engine API version against the real engine here (Debian's docker.io 20.10, API
1.41): its own newest version, accepted for versioned calls. Engine 29 is covered by its stand-in
in tests/unit/test_engine_api_version.py."""

from __future__ import annotations

import docker.utils
import pytest

from cidemo_infra.engines import API_NEWEST, negotiated_client

pytestmark = pytest.mark.integration
LOCAL = "unix:///var/run/docker.sock"


def test_the_engine_here_is_spoken_to_at_the_newest_version_both_know(engine) -> None:
    answered = engine.api.version(api_version=False)
    newest = answered["ApiVersion"]
    expected = API_NEWEST if docker.utils.version_lt(API_NEWEST, newest) else newest
    client = negotiated_client(LOCAL, node="local")
    assert client.api.api_version == expected
    assert client.api.version()["ApiVersion"] == newest  # a call at that version is accepted
    assert isinstance(client.api.containers(limit=1), list)
