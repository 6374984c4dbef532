"""The images' etcd library (cidemo_infra/data/images/common/etcd.sh) against a real etcd (Debian's
etcd-server, plain HTTP on loopback, started here): the writes a registration makes, and the
encoding of the values it compares. The library runs in the galera image, which carries it with
its curl and jq, on this machine's network."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import docker
import pytest

from cidemo_infra import images
from cidemo_infra.console import Reporter
from tests.conftest import need
from tests.integration.conftest import free_port, start_process, stop_process

pytestmark = pytest.mark.integration

LIB = "/usr/local/lib/cidemo/etcd.sh"
OURS = {"/lib/database_port/h:c:3306": "10.0.0.11:3306", "/lib/odd": "a b/é&=+%?#"}


@pytest.fixture(scope="module")
def image(engine: docker.DockerClient) -> str:
    tags = images.ensure_images({"local": engine}, {"local": ("galera",)}, Reporter(quiet=True))
    return tags["galera"]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need(shutil.which("etcd") is not None, "etcd (Debian etcd-server)")
    work = tmp_path_factory.mktemp("etcd-lib")
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    proc = start_process(
        [
            "etcd", "--name", "lib", "--data-dir", str(work / "data"), "--enable-v2=true",
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"lib={peer}",
        ],
        work / "etcd.log",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{client}/version", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, (work / "etcd.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "etcd did not answer in 60 s"
                time.sleep(0.3)
        yield client
    finally:
        stop_process(proc)


def run_lib(engine: docker.DockerClient, image: str, url: str, script: str) -> tuple[int, str]:
    """`script` in bash with the library sourced; its exit code and output."""
    box = engine.containers.run(
        image,
        entrypoint=["bash", "-c", f". {LIB}; {script}"],
        environment={"ETCD_URL": url, "ETCD_TIMEOUT": "5"},
        network_mode="host",
        labels={"io.cidemo.test": "etcd-shell-library"},
        detach=True,
    )
    try:
        rc = int(box.wait(timeout=60)["StatusCode"])
        return rc, box.logs().decode(errors="replace")
    finally:
        box.remove(force=True)


def node(url: str, key: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"{url}/v2/keys{key}", timeout=5) as answer:
            return dict(json.loads(answer.read())["node"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def put(url: str, key: str, value: str) -> None:
    data = urllib.parse.urlencode({"value": value}).encode()
    request = urllib.request.Request(f"{url}/v2/keys{key}", data=data, method="PUT")
    urllib.request.urlopen(request, timeout=5).close()


def pairs() -> str:
    return " ".join(f"'{k}' '{v}'" for k, v in OURS.items())


def test_a_registration_sets_absent_keys_then_refreshes_them(
    engine: docker.DockerClient, image: str, etcd: str
) -> None:
    assert all(node(etcd, k) is None for k in OURS)
    rc, out = run_lib(engine, image, etcd, f"etcd_refresh_all 30 {pairs()}")
    assert rc == 0, out
    for key, value in OURS.items():
        found = node(etcd, key)
        assert found is not None and found["value"] == value and 0 < int(found["ttl"]) <= 30
    rc, out = run_lib(engine, image, etcd, f"etcd_refresh_all 300 {pairs()}")
    assert rc == 0, out
    for key, value in OURS.items():
        found = node(etcd, key)
        assert found is not None and found["value"] == value and int(found["ttl"]) > 30


def test_a_key_that_holds_another_value_gets_ours_again(
    engine: docker.DockerClient, image: str, etcd: str
) -> None:
    key = next(iter(OURS))
    put(etcd, key, "someone else")
    rc, out = run_lib(engine, image, etcd, f"etcd_refresh_all 30 {pairs()}")
    assert rc == 0, out
    found = node(etcd, key)
    assert found is not None and found["value"] == OURS[key]


def test_values_are_encoded_as_rfc_3986_asks(
    engine: docker.DockerClient, image: str, etcd: str
) -> None:
    values = ["10.0.0.11:3306", "a b/é&=+%?#", "plain-._~", '{"node":"deis-1","generation":2}']
    script = "; ".join(f"_etcd_uri '{v}'; echo" for v in values)
    rc, out = run_lib(engine, image, etcd, script)
    assert rc == 0, out
    assert out.splitlines() == [urllib.parse.quote(v, safe="-._~") for v in values]


def test_an_etcd_that_does_not_answer_is_2(engine: docker.DockerClient, image: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for call in (f"etcd_refresh_all 30 {pairs()}", f"etcd_set_all 30 {pairs()}"):
        rc, out = run_lib(engine, image, closed, f"{call}; echo rc=$?")
        assert rc == 0 and out.strip().endswith("rc=2"), out
