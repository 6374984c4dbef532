"""The GitHub API base (`CIDEMO_GITHUB_API`) never lets the token cross a network in clear."""

from __future__ import annotations

import pytest

from cidemo_infra.pipeline.github import ApiUrlError, Collaborators, PullRequests, checked_api_url
from cidemo_infra.webhook.status import CommitStatusClient, StatusError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "url",
    [
        "https://api.github.com",
        "https://ghe.example.com/api/v3/",
        "http://127.0.0.1:8080",
        "http://127.1.2.3",
        "http://localhost:9000/api",
        "http://[::1]:9000",
    ],
)
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    assert checked_api_url(url) == url.rstrip("/")
    assert CommitStatusClient("t", url).api_url == url.rstrip("/")
    assert PullRequests("t", url).api_url == url.rstrip("/")
    assert Collaborators("t", url).api_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.github.com",
        "http://10.1.2.3:8080/api/v3",
        "http://localhost.example.com",
        "http://[::ffff:10.0.0.1]",
        "ftp://127.0.0.1",
        "api.github.com",
        "https://",
    ],
)
def test_cleartext_or_malformed_api_urls_are_refused(url: str) -> None:
    with pytest.raises(ApiUrlError, match="CIDEMO_GITHUB_API") as refused:
        checked_api_url(url)
    assert refused.value.exit_code == 2
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(StatusError, match="CIDEMO_GITHUB_API"):
        CommitStatusClient("token-never-shown", url)
    with pytest.raises(ApiUrlError):
        PullRequests("t", url)
    with pytest.raises(ApiUrlError):
        Collaborators("t", url)
