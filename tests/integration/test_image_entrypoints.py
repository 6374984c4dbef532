"""The service images refuse a bad environment at start: one FATAL line, exit 1, nothing
registered. The identity (ETCD_URL, NODE_ADDRESS, TTL) is checked by one function of the images'
shared library (cidemo_infra/data/images/common/etcd.sh) for every image that registers itself."""

from __future__ import annotations

import docker
import pytest

from cidemo_infra import images
from cidemo_infra.console import Reporter

pytestmark = pytest.mark.integration

SERVICES = ("dbproxy", "jenkins-standin", "galera")


@pytest.fixture(scope="module")
def tags(engine: docker.DockerClient) -> dict[str, str]:
    return images.ensure_images({"local": engine}, {"local": SERVICES}, Reporter(quiet=True))


def start(engine: docker.DockerClient, image: str, env: dict[str, str]) -> tuple[int, str]:
    container = engine.containers.create(
        image, environment=env, labels={"io.cidemo.test": "entrypoints"}
    )
    try:  # created, so removed even when it cannot start
        container.start()
        code = container.wait(timeout=60)["StatusCode"]
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "FATAL: ETCD_URL is not set"),
        ({"ETCD_URL": "http://127.0.0.1:9", "TTL": "1"}, "TTL must be an integer >= 2, got '1'"),
        ({"ETCD_URL": "http://127.0.0.1:9", "TTL": "ten"}, "TTL must be an integer >= 2"),
    ],
    ids=["no-etcd-url", "ttl-1", "ttl-word"],
)
def test_a_bad_environment_is_one_fatal_line_and_exit_1(
    engine: docker.DockerClient,
    tags: dict[str, str],
    service: str,
    env: dict[str, str],
    message: str,
) -> None:
    code, logs = start(engine, tags[service], env)
    assert code == 1, logs
    fatal = [ln for ln in logs.splitlines() if "FATAL" in ln]
    assert len(fatal) == 1 and message in fatal[0], logs


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUTO_RECOVERY": "maybe"}, "AUTO_RECOVERY must be on or off, got 'maybe'"),
        ({"RECOVERY_WAIT": "soon"}, "RECOVERY_WAIT must be a number of seconds, got 'soon'"),
        (
            {"NODE_NAME": "deis-9", "EXPECTED_MEMBERS": "deis-1,deis-2,deis-3"},
            "NODE_NAME 'deis-9' is not in EXPECTED_MEMBERS 'deis-1,deis-2,deis-3'",
        ),
    ],
    ids=["auto-recovery-word", "recovery-wait-word", "not-an-expected-member"],
)
def test_a_bad_recovery_setting_is_one_fatal_line_and_exit_1(
    engine: docker.DockerClient, tags: dict[str, str], env: dict[str, str], message: str
) -> None:
    code, logs = start(engine, tags["galera"], {"ETCD_URL": "http://127.0.0.1:9", **env})
    assert code == 1, logs
    fatal = [ln for ln in logs.splitlines() if "FATAL" in ln]
    assert len(fatal) == 1 and message in fatal[0], logs
