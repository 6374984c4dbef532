"""Fixtures of the cloud tier: the cloud named by OS_CLOUD, unique site names, sites, cleanup.

Every test works under site names of its own (`ct<hex>`); a finalizer sweeps each one, so a failed
test leaves nothing on the cloud. The names of the test cloud's image, flavors and external network
default to what tests/cloud/openstack/openstack-up creates; CIDEMO_TEST_* variables override them.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from openstack.connection import Connection

from cidemo_infra.cloud import connect, find, sweep
from cidemo_infra.errors import CloudError
from cidemo_infra.site import Site

IMAGE = os.environ.get("CIDEMO_TEST_IMAGE", "cirros-fake")
FLAVOR_DEIS = os.environ.get("CIDEMO_TEST_FLAVOR_DEIS", "m1.medium")
FLAVOR_STANDALONE = os.environ.get("CIDEMO_TEST_FLAVOR_STANDALONE", "m1.small")
FLAVOR_TINY = os.environ.get("CIDEMO_TEST_FLAVOR_TINY", "m1.tiny")
EXTERNAL_NETWORK = os.environ.get("CIDEMO_TEST_EXTERNAL_NETWORK", "public")
HOW = (
    "boot the test cloud with tests/cloud/openstack/openstack-up, then set "
    "OS_CLIENT_CONFIG_FILE=<BASE>/clouds.yaml and OS_CLOUD=cidemo-test"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """openstacksdk warns about its own internals on every call; that is not this project's news."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning:openstack"))
            item.add_marker(
                pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")
            )


def missing(what: str) -> NoReturn:
    """No cloud: a failure in CI, a skip on a developer's machine."""
    if os.environ.get("CI"):
        pytest.fail(f"required service missing in CI: {what}; {HOW}")
    pytest.skip(f"{what}; {HOW}")


@pytest.fixture(scope="session")
def cloud_name() -> str:
    name = os.environ.get("OS_CLOUD")
    if not name:
        missing("OS_CLOUD is not set")
    return name


@pytest.fixture(scope="session")
def conn(cloud_name: str) -> Connection:
    try:
        return connect(cloud_name)
    except CloudError as exc:
        missing(f"cloud '{cloud_name}' is not usable ({exc})")


@pytest.fixture(scope="session")
def external_subnet_stays_here(conn: Connection) -> str:
    """The test cloud's floating IPs must not route off this machine: a probe of a node's engine
    (destroy looks for services to remove) then fails here at once. openstack-up adds the route."""
    external = conn.network.find_network(EXTERNAL_NETWORK, ignore_missing=False)
    cidr = str(next(conn.network.subnets(network_id=external.id)).cidr)
    routes = subprocess.run(
        ["ip", "route", "show", cidr], capture_output=True, text=True, check=False
    ).stdout
    if not routes.strip():
        missing(f"a local route for the test cloud's external subnet {cidr} (openstack-up adds it)")
    return cidr


@pytest.fixture(scope="session")
def admin_conn(cloud_name: str) -> Connection:
    name = os.environ.get("OS_CLOUD_ADMIN", f"{cloud_name}-admin")
    try:
        return connect(name)
    except CloudError as exc:
        missing(f"admin cloud '{name}' (OS_CLOUD_ADMIN) is not usable ({exc})")


def new_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " cidemo-cloud-test"


@pytest.fixture(scope="session")
def public_key() -> str:
    return new_public_key()


@pytest.fixture
def instance_quota(conn: Connection, admin_conn: Connection) -> Iterator[Callable[[int], None]]:
    """Set the test project's instance quota; the old value comes back in the finalizer."""
    project = conn.current_project_id
    old = admin_conn.compute.get_quota_set(project).instances

    def set_to(value: int) -> None:
        admin_conn.compute.update_quota_set(project, instances=value)

    yield set_to
    admin_conn.compute.update_quota_set(project, instances=old)
    assert admin_conn.compute.get_quota_set(project).instances == old


@pytest.fixture
def new_site_name(conn: Connection) -> Iterator[Callable[[], str]]:
    """Unique site names; each one's resources and keypair `<name>-key` are swept at the end."""
    names: list[str] = []

    def make() -> str:
        names.append(f"ct{secrets.token_hex(3)}")
        return names[-1]

    yield make
    left = []
    for name in names:
        sweep(conn, name, delete=True, key_name=f"{name}-key")
        left += find(conn, name, key_name=f"{name}-key")
    assert not left, f"the finalizer's sweep left: {left}"


@pytest.fixture
def site_name(new_site_name: Callable[[], str]) -> str:
    return new_site_name()


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_site(site_name: str, cloud_name: str, public_key: str) -> Callable[..., Site]:
    """A valid OpenStack site for the test cloud (3 Deis nodes, 1 standalone), with changes."""

    def make(name: str = site_name, **changes: Any) -> Site:
        cidr = ipaddress.IPv4Network(
            f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.0/24"
        )
        data = {
            "name": name,
            "target": "openstack",
            "cloud": cloud_name,
            "network": {"cidr": str(cidr), "external_network": EXTERNAL_NETWORK},
            "admin_cidrs": ["203.0.113.0/24"],
            "ssh": {"key_name": f"{name}-key", "public_key": public_key},
            "roles": {
                "deis": {
                    "flavor": FLAVOR_DEIS,
                    "image": IMAGE,
                    "min_ram_mb": 4096,
                    "min_disk_gb": 40,
                    "min_vcpus": 2,
                },
                "standalone": {"flavor": FLAVOR_STANDALONE, "image": IMAGE},
            },
        }
        return Site.model_validate(merge(data, changes))

    return make
