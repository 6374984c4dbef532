"""The object store the backups go to: a member's own container, its objects, nobody else's.

Swift behind keystone: the member user of OS_CLOUD creates a container in its project's account
(`AUTH_<project id>`), stores, lists, reads back and deletes an object; without a token the account
answers 401, and another project's account 403.
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from openstack import exceptions
from openstack.connection import Connection

from tests.cloud.conftest import missing

pytestmark = pytest.mark.cloud


@pytest.fixture
def store(conn: Connection) -> Connection:
    if not conn.has_service("object-store"):
        missing(f"cloud '{conn.config.name}' has no object-store service in its catalog")
    return conn


@pytest.fixture
def container(store: Connection) -> Iterator[str]:
    """A container name of this test's own; the container and what is in it go at the end."""
    name = f"ct{secrets.token_hex(3)}-backups"
    yield name
    try:
        left = list(store.object_store.objects(name))
    except exceptions.NotFoundException:
        return
    for obj in left:
        store.object_store.delete_object(obj, container=name)
    store.object_store.delete_container(name)


def test_a_member_stores_lists_reads_and_deletes_an_object(
    store: Connection, container: str
) -> None:
    objects = store.object_store
    data = secrets.token_bytes(256 * 1024)
    name = "site/etcd-snapshot.db"

    objects.create_container(name=container)
    objects.create_object(container, name, data=data)

    assert container in [c.name for c in objects.containers()]
    listed = list(objects.objects(container))
    assert [(o.name, o.content_length) for o in listed] == [(name, len(data))]
    assert objects.download_object(name, container=container) == data

    objects.delete_object(name, container=container, ignore_missing=False)
    assert list(objects.objects(container)) == []
    objects.delete_container(container, ignore_missing=False)
    assert container not in [c.name for c in objects.containers()]


def test_the_account_refuses_a_request_without_a_token(store: Connection) -> None:
    account = store.object_store.get_endpoint().rstrip("/")
    assert account.endswith(f"/AUTH_{store.current_project_id}")

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(account, timeout=30)

    assert err.value.code == 401


def test_another_projects_account_is_forbidden_to_the_member(store: Connection) -> None:
    account = store.object_store.get_endpoint().rstrip("/")
    other = account.rsplit("/AUTH_", 1)[0] + f"/AUTH_{uuid.uuid4().hex}"

    response = store.session.get(other, raise_exc=False)

    assert response.status_code == 403
