"""connect(): a token and the endpoints, or one line naming the cloud and what failed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openstack
import pytest
from openstack.connection import Connection

from cidemo_infra.cloud import connect, preflight
from cidemo_infra.errors import CloudError
from cidemo_infra.site import Site

pytestmark = pytest.mark.cloud


def clouds_yaml(path: Path, auth_url: str, password: str) -> Path:
    path.write_text(
        "clouds:\n"
        "  ct-wrong:\n"
        "    auth:\n"
        f"      auth_url: {auth_url}\n"
        "      username: cidemo\n"
        f"      password: {password}\n"
        "      project_name: cidemo\n"
        "      user_domain_name: Default\n"
        "      project_domain_name: Default\n"
        "    region_name: RegionOne\n"
    )
    return path


def test_the_test_cloud_connects_with_a_project_token(conn: Connection) -> None:
    assert conn.current_project_id
    assert conn.endpoint_for("compute") and conn.endpoint_for("network")


def test_a_refused_password_names_the_cloud_and_never_shows_the_password(
    conn: Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "not-the-password-7d1f"
    config = clouds_yaml(tmp_path / "clouds.yaml", conn.config.auth["auth_url"], password)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))

    with pytest.raises(CloudError) as err:
        connect("ct-wrong")

    message = str(err.value)
    assert message.startswith("cloud 'ct-wrong': authentication failed")
    assert "401" in message
    assert password not in message
    assert "\n" not in message


def test_preflight_with_refused_credentials_reports_only_that(
    conn: Connection,
    make_site: Callable[..., Site],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = clouds_yaml(tmp_path / "clouds.yaml", conn.config.auth["auth_url"], "wrong-pw")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))
    bad = openstack.connect(cloud="ct-wrong")
    site = make_site()

    problems = preflight(site, bad)

    assert len(problems) == 1
    assert problems[0].startswith("cloud: the credentials of cloud 'ct-wrong' do not work")
    assert "wrong-pw" not in problems[0]


def test_an_unknown_cloud_name_says_where_it_looked(conn: Connection) -> None:
    with pytest.raises(
        CloudError, match=r"^cloud 'ct-no-such-cloud': no such entry in clouds.yaml"
    ):
        connect("ct-no-such-cloud")
