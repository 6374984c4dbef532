"""The Python half of openstack-up: secrets, configs, identity, the test cloud's resources.

Run with the test cloud's own venv (`$BASE/venv/bin/python cloudsetup.py STEP BASE`); the ports
come from openstack-up's environment (PORT_*), passwords from `$BASE/secrets` (mode 0600), never
from a command line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import string
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PASSWORDS = (
    "admin",
    "cidemo",
    "db",
    "rabbit",
    "glance",
    "placement",
    "nova",
    "neutron",
    "swift",
    "swift-hash-prefix",
    "swift-hash-suffix",
)
SERVICE_USERS = ("glance", "placement", "nova", "neutron", "swift")
ADMIN_CLOUD = "cidemo-test-admin"
MEMBER_CLOUD = "cidemo-test"
PROJECT = "cidemo"
IMAGE = "cirros-fake"
FLAVORS = {  # name: (ram MB, vCPUs, disk GB)
    "m1.tiny": (64, 1, 1),
    "m1.small": (2048, 1, 20),
    "m1.medium": (4096, 2, 40),
    "m1.large": (8192, 4, 80),
}
EXTERNAL_NETWORK = "public"
EXTERNAL_CIDR = "172.24.4.0/24"


def port(name: str) -> int:
    return int(os.environ[f"PORT_{name.upper()}"])


def keystone_url() -> str:
    return f"http://127.0.0.1:{port('keystone')}/v3"


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def password(base: Path, name: str) -> str:
    return (base / "secrets" / name).read_text().strip()


def make_secrets(base: Path) -> None:
    (base / "secrets").mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in PASSWORDS:
        path = base / "secrets" / name
        if not path.exists():
            write_private(path, secrets.token_hex(16) + "\n")


def render(base: Path, computes: int) -> None:
    venv = base / "venv"
    values = {
        "BASE": str(base),
        "LOGS": str(base / "logs"),
        "DB_URL": f"mysql+pymysql://cidemo_os:{password(base, 'db')}@127.0.0.1:{port('db')}",
        "TRANSPORT_URL": f"rabbit://cidemo:{password(base, 'rabbit')}@127.0.0.1:{port('mq')}/",
        "KEYSTONE_URL": keystone_url(),
        "PORT_GLANCE": str(port("glance")),
        **{
            f"PORT_{name.upper()}": str(port(name))
            for name in ("swift", "swift_account", "swift_container", "swift_object")
        },
        "SWIFT_HASH_PREFIX": password(base, "swift-hash-prefix"),
        "SWIFT_HASH_SUFFIX": password(base, "swift-hash-suffix"),
        "PW_RABBIT": password(base, "rabbit"),
        **{f"PW_{user.upper()}": password(base, user) for user in SERVICE_USERS},
    }
    etc = base / "etc"
    targets = {
        "keystone.conf": etc / "keystone/keystone.conf",
        "glance-api.conf": etc / "glance/glance-api.conf",
        "placement.conf": etc / "placement/placement.conf",
        "nova.conf": etc / "nova/nova.conf",
        "nova-api-log.conf": etc / "nova/nova-api-log.conf",
        "neutron.conf": etc / "neutron/neutron.conf",
        "ml2_conf.ini": etc / "neutron/plugins/ml2/ml2_conf.ini",
        "rabbitmq.conf": base / "rabbit/rabbitmq.conf",
        "swift.conf": etc / "swift/swift.conf",
        "swift-proxy-server.conf": etc / "swift/proxy-server.conf",
        "swift-account-server.conf": etc / "swift/account-server.conf",
        "swift-container-server.conf": etc / "swift/container-server.conf",
        "swift-object-server.conf": etc / "swift/object-server.conf",
    }
    for template, target in targets.items():
        write_private(target, fill(template, values))
    for i in range(1, computes + 1):
        host = {"COMPUTE_HOST": f"cidemo-compute-{i}"}
        write_private(etc / f"nova/compute-{i}.conf", fill("nova-compute.conf", values | host))
    shutil.copy(venv / "etc/glance/glance-api-paste.ini", etc / "glance")
    shutil.copy(venv / "etc/nova/api-paste.ini", etc / "nova")
    shutil.copy(venv / "etc/neutron/api-paste.ini", etc / "neutron")
    write_clouds(base)


def fill(template: str, values: dict[str, str]) -> str:
    """`${NAME}` placeholders; a missing value raises instead of leaving a hole in a config."""
    return string.Template((HERE / "etc" / template).read_text()).substitute(values)


def write_clouds(base: Path) -> None:
    def cloud(user: str, project: str) -> str:
        return (
            f"  {{name}}:\n"
            f"    auth:\n"
            f"      auth_url: {keystone_url()}\n"
            f"      username: {user}\n"
            f"      password: {password(base, user)}\n"
            f"      project_name: {project}\n"
            f"      user_domain_name: Default\n"
            f"      project_domain_name: Default\n"
            f"    region_name: RegionOne\n"
            f"    interface: public\n"
            f"    identity_api_version: 3\n"
        )

    text = (
        "# Written by tests/cloud/openstack/openstack-up; the passwords are generated per boot.\n"
        "clouds:\n"
        + cloud("cidemo", PROJECT).format(name=MEMBER_CLOUD)
        + cloud("admin", "admin").format(name=ADMIN_CLOUD)
    )
    write_private(base / "clouds.yaml", text)


def database_sql(base: Path) -> None:
    """The databases and the one SQL user of all services, for `mariadb` on stdin."""
    names = ("keystone", "glance", "placement", "nova_api", "nova_cell0", "nova", "neutron")
    lines = [f"CREATE USER 'cidemo_os'@'127.0.0.1' IDENTIFIED BY '{password(base, 'db')}';"]
    for name in names:
        lines.append(f"CREATE DATABASE {name};")
        lines.append(f"GRANT ALL ON {name}.* TO 'cidemo_os'@'127.0.0.1';")
    sys.stdout.write("\n".join(lines) + "\n")


def admin() -> Any:
    import openstack

    return openstack.connect(cloud=ADMIN_CLOUD)


def identity(base: Path) -> None:
    """Service users, the catalog, and the project and member user the tests run as."""
    conn = admin()
    idp = conn.identity
    roles = {name: find_or_create_role(idp, name) for name in ("admin", "member", "service")}
    service_project = idp.create_project(name="service", domain_id="default")
    for name in SERVICE_USERS:
        user = idp.create_user(
            name=name,
            password=password(base, name),
            domain_id="default",
            default_project_id=service_project.id,
        )
        for role in ("admin", "service"):
            idp.assign_project_role_to_user(service_project, user, roles[role])
    project = idp.create_project(
        name=PROJECT, domain_id="default", description="cidemo cloud tests"
    )
    user = idp.create_user(
        name="cidemo",
        password=password(base, "cidemo"),
        domain_id="default",
        default_project_id=project.id,
    )
    idp.assign_project_role_to_user(project, user, roles["member"])
    catalog = [
        ("glance", "image", f"http://127.0.0.1:{port('glance')}"),
        ("placement", "placement", f"http://127.0.0.1:{port('placement')}"),
        ("nova", "compute", f"http://127.0.0.1:{port('nova')}/v2.1"),
        ("neutron", "network", f"http://127.0.0.1:{port('neutron')}"),
        ("swift", "object-store", f"http://127.0.0.1:{port('swift')}/v1/AUTH_%(project_id)s"),
    ]
    for name, kind, url in catalog:
        service = idp.create_service(name=name, type=kind)
        for interface in ("public", "internal", "admin"):
            idp.create_endpoint(
                service_id=service.id, interface=interface, url=url, region_id="RegionOne"
            )


def find_or_create_role(idp: Any, name: str) -> Any:
    return idp.find_role(name) or idp.create_role(name=name)


def resources(base: Path) -> None:
    """What every site on the test cloud names: an image, flavors, the external network."""
    conn = admin()
    conn.image.create_image(
        name=IMAGE,
        disk_format="raw",
        container_format="bare",
        visibility="public",
        data=b"\0" * 1024,
        allow_duplicates=True,
    )
    for name, (ram, vcpus, disk) in FLAVORS.items():
        conn.compute.create_flavor(name=name, ram=ram, vcpus=vcpus, disk=disk, is_public=True)
    net = conn.network.create_network(
        name=EXTERNAL_NETWORK,
        is_router_external=True,
        provider_network_type="flat",
        provider_physical_network="public",
    )
    conn.network.create_subnet(
        name=f"{EXTERNAL_NETWORK}-subnet",
        network_id=net.id,
        ip_version=4,
        cidr=EXTERNAL_CIDR,
        gateway_ip="172.24.4.1",
        is_dhcp_enabled=False,
    )
    image = conn.image.find_image(IMAGE)
    if image is None or image.status != "active":
        raise SystemExit(f"image {IMAGE} is not active: {image and image.status}")


def object_store_round_trip() -> None:
    """The member user PUTs, GETs and DELETEs an object in a container of its own account."""
    import openstack

    store = openstack.connect(cloud=MEMBER_CLOUD).object_store
    container = f"cidemo-ready-{secrets.token_hex(4)}"
    data = secrets.token_bytes(1024)
    store.create_container(name=container)
    try:
        store.create_object(container, "probe", data=data)
        got = store.download_object("probe", container=container)
        if got != data:
            raise SystemExit(f"object store: read back {len(got)} bytes, not the 1024 written")
        store.delete_object("probe", container=container, ignore_missing=False)
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: the first error is the news
            store.delete_object("probe", container=container, ignore_missing=True)
            store.delete_container(container, ignore_missing=True)
        raise
    store.delete_container(container, ignore_missing=False)


def ready(base: Path, computes: int, timeout: float) -> None:
    """The object store works for the member user; every compute host is up in nova and has its
    inventory in placement: servers can land."""
    object_store_round_trip()
    conn = admin()
    hosts = {f"cidemo-compute-{i}" for i in range(1, computes + 1)}
    deadline = time.monotonic() + timeout
    missing: set[str] = set(hosts)
    while time.monotonic() < deadline:
        up = {
            s.host
            for s in conn.compute.services(binary="nova-compute")
            if s.state == "up" and s.status == "enabled"
        }
        placed = {
            rp.name
            for rp in conn.placement.resource_providers()
            if rp.name in hosts
            and any(True for _ in conn.placement.resource_provider_inventories(rp))
        }
        missing = hosts - (up & placed)
        if not missing:
            return
        time.sleep(1)
    raise SystemExit(
        f"compute hosts not ready after {timeout:.0f}s (nova service up and placement "
        f"inventory): {', '.join(sorted(missing))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "step", choices=("secrets", "render", "database-sql", "identity", "resources", "ready")
    )
    parser.add_argument("base", type=Path)
    parser.add_argument("--computes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    base = args.base.resolve()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(base / "clouds.yaml")
    if args.step == "secrets":
        make_secrets(base)
    elif args.step == "render":
        render(base, args.computes)
    elif args.step == "database-sql":
        database_sql(base)
    elif args.step == "identity":
        identity(base)
    elif args.step == "resources":
        resources(base)
    else:
        ready(base, args.computes, args.timeout)


if __name__ == "__main__":
    main()
