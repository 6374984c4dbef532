"""Desired state: one frozen `ContainerSpec` per container the site wants, computed from data."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
from dataclasses import asdict, dataclass, field

from cidemo_infra.inventory import Inventory, InventoryNode
from cidemo_infra.site import Site

LABEL_SITE = "io.cidemo.site"
LABEL_ROLE = "io.cidemo.role"
LABEL_APPS_OF = "io.cidemo.apps-of"  # what the site's apps own (placement/teardown.py)
LABEL_NODE = "io.cidemo.node"
LABEL_SPEC = "io.cidemo.spec"

GALERA_PORTS = {
    "database_port": 3306,
    "database_sst": 4444,
    "database_mon": 4567,
    "database_ssi": 4568,
}
PROXY_RW_PORT = 4006
PROXY_RO_PORT = 4008
JENKINS_PORT = 8080
ETCD_PORT = 2379
ROUTER_PORT = 8000  # the app router's HTTP listener inside its container

# Secrets reach containers as files under /etc/cidemo/secrets (copied in before start).
GALERA_SECRETS = ("root_password", "sst_password", "monitor_password")
# TLS files reach containers the same way, under /etc/cidemo/tls: (file name, path in the site's
# TLS directory). Each component has its own etcd client certificate (tls/pki.py `clients/`).
TLS_DIR_IN_CONTAINER = "/etc/cidemo/tls"
ETCD_SERVER_NAME = "site-etcd"  # the local etcd container's server certificate (nodes/<this>/)
PROXY_SECRETS = ("monitor_password",)
JENKINS_SECRETS = ("jenkins_admin_password",)


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    node: str
    role: str  # etcd | galera | dbproxy | jenkins | router | registry
    image: str
    engine: str
    env: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    network: str | None = None
    ip: str | None = None
    hostname: str | None = None
    ports: tuple[tuple[int, str, int], ...] = ()  # (container port, host ip, host port)
    volumes: tuple[tuple[str, str], ...] = ()  # (volume name, mount path)
    secrets: tuple[str, ...] = ()  # names only; values never enter a spec or a label
    tls_files: tuple[tuple[str, str], ...] = ()  # (file in TLS_DIR_IN_CONTAINER, path in tls dir)
    site: str = ""
    extra_labels: tuple[tuple[str, str], ...] = field(default=())

    @property
    def spec_hash(self) -> str:
        data = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_SITE: self.site,
            LABEL_ROLE: self.role,
            LABEL_NODE: self.node,
            LABEL_SPEC: self.spec_hash,
            **dict(self.extra_labels),
        }


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    engine: str
    subnet: str
    ip_range: str
    site: str

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_SITE: self.site, LABEL_ROLE: "network"}


def network_name(site: Site) -> str:
    return f"cidemo-{site.name}"


def container_name(site: Site, role: str, node: str | None = None) -> str:
    return f"cidemo-{site.name}-{role}" + (f"-{node}" if node else "")


def volume_name(site: Site, role: str, node: str | None = None) -> str:
    return container_name(site, role, node) + "-data"


def network_specs(site: Site) -> list[NetworkSpec]:
    if site.target != "local":
        return []
    used = {site.engine_of(n) for n in site.nodes}
    specs = []
    for engine in site.engines:
        if engine not in used:
            continue
        subnet = site.subnet_of(engine)
        upper = list(subnet.subnets(prefixlen_diff=1))[1]
        specs.append(NetworkSpec(network_name(site), engine, str(subnet), str(upper), site.name))
    return specs


def image_refs(site: Site) -> dict[str, str]:
    """Role -> image reference; `project:<name>` is built from data/images/<name>/."""
    services = site.services
    refs = {
        "galera": services.galera.image or "project:galera",
        "dbproxy": services.proxy.image or "project:dbproxy",
    }
    if site.target == "local":
        refs["etcd"] = services.etcd.image or "project:etcd"
    if services.jenkins.enabled:
        refs["jenkins"] = services.jenkins.image or "project:jenkins"
    if has_router(site):
        refs["router"] = "project:router"
    if has_registry(site):
        refs["registry"] = services.registry.image or "project:registry"
    return refs


def has_registry(site: Site) -> bool:
    """The image registry is placed for sites that build their apps' images."""
    return "environments" in site.model_fields_set and site.environments.build is not None


def has_router(site: Site) -> bool:
    """The app router is placed for sites that configure environments on the swarm platform."""
    return "environments" in site.model_fields_set and site.environments.platform == "swarm"


def site_cidrs(site: Site, inventory: Inventory | None = None) -> str:
    """The site's networks (comma-separated): the only addresses the proxy takes members from.
    A cloud site's is its private network, and each node's own address where the cloud gave one
    outside it (the inventory is what Terraform reported)."""
    if site.target != "local":
        network = ipaddress.ip_network(str(site.network.cidr))
        nodes = inventory.nodes if inventory is not None else ()
        outside = sorted(
            {
                f"{n.private_ip}/32"
                for n in nodes
                if ipaddress.ip_address(n.private_ip) not in network
            }
        )
        return ",".join([str(network), *outside])
    return ",".join(sorted({str(site.subnet_of(site.engine_of(n))) for n in site.nodes}))


def apps_domain(site: Site) -> str:
    return site.environments.domain or site.domain


def roles_by_engine(site: Site, inventory: Inventory) -> dict[str, set[str]]:
    """Which roles run on which engine (to know where each image must be present)."""
    out: dict[str, set[str]] = {}
    standalone = inventory.of_role("standalone")[0]
    out.setdefault(standalone.engine, set()).update(
        ("etcd", "dbproxy", "jenkins", "router", "registry")
    )
    for node in inventory.of_role("deis")[: site.services.galera.members]:
        out.setdefault(node.engine, set()).add("galera")
    return out


def desired_specs(site: Site, inventory: Inventory, images: dict[str, str]) -> list[ContainerSpec]:
    """Every container the site wants, in the order they must come up; `images`: role -> ref.

    local: containers on the site's bridge network with fixed addresses; the proxy, Jenkins and
    etcd are published on 127.0.0.1. openstack: containers share the node's network and listen
    on its private address only; the tool reaches them through the gateway container.
    """
    standalone = inventory.of_role("standalone")[0]
    specs: list[ContainerSpec] = []
    if site.target == "local":
        engine = standalone.engine
        specs.append(
            ContainerSpec(
                name=container_name(site, "etcd"),
                node=standalone.name,
                role="etcd",
                image=images["etcd"],
                engine=engine,
                site=site.name,
                env=(
                    ("ETCD_NAME", f"{site.name}-etcd"),
                    (
                        "ETCD_ADVERTISE_CLIENT_URLS",
                        etcd_url_in_cluster(site, inventory, standalone),
                    ),
                    ("ETCD_TLS", "on"),
                ),
                network=network_name(site),
                ip=local_address(site, engine, ETCD_HOST_INDEX),
                hostname="etcd",
                ports=((ETCD_PORT, "127.0.0.1", site.services.etcd.port),),
                volumes=((volume_name(site, "etcd"), "/var/lib/etcd"),),
                tls_files=etcd_server_tls_files(),
            )
        )
    else:
        specs.append(_service_spec(site, inventory, standalone, "gateway", images["dbproxy"]))
    galera = site.services.galera
    galera_nodes = [n.name for n in inventory.of_role("deis")[: galera.members]]
    for node in inventory.of_role("deis")[: galera.members]:
        specs.append(
            _service_spec(
                site,
                inventory,
                node,
                "galera",
                images["galera"],
                extra_env=(
                    ("CLUSTER_NAME", galera.cluster_name),
                    ("SST_METHOD", galera.sst_method),
                    ("JOIN_TIMEOUT", str(galera.join_timeout)),
                    ("AUTO_RECOVERY", "on" if galera.auto_recovery else "off"),
                    ("RECOVERY_WAIT", str(galera.recovery_wait)),
                    ("EXPECTED_MEMBERS", ",".join(galera_nodes)),
                ),
                volumes=((volume_name(site, "galera", node.name), "/var/lib/mysql"),),
                secrets=GALERA_SECRETS,
                tls_files=etcd_client_tls_files("galera") + mysql_server_tls_files(node.name),
            )
        )
    proxy = site.services.proxy
    specs.append(
        _service_spec(
            site,
            inventory,
            standalone,
            "dbproxy",
            images["dbproxy"],
            extra_env=(("PROXY_KIND", proxy.kind), ("BACKEND_CIDRS", site_cidrs(site, inventory))),
            ports=((PROXY_RW_PORT, proxy.rw_port), (PROXY_RO_PORT, proxy.ro_port)),
            secrets=PROXY_SECRETS,
            tls_files=etcd_client_tls_files("dbproxy"),
        )
    )
    jenkins = site.services.jenkins
    if jenkins.enabled:
        specs.append(
            _service_spec(
                site,
                inventory,
                standalone,
                "jenkins",
                images["jenkins"],
                ports=((JENKINS_PORT, jenkins.port),),
                volumes=((volume_name(site, "jenkins"), "/var/jenkins_home"),),
                secrets=JENKINS_SECRETS,
                tls_files=etcd_client_tls_files("jenkins"),
            )
        )
    if has_router(site):
        specs.append(_router_spec(site, inventory, images["router"]))
    if has_registry(site):
        specs.append(_registry_spec(site, inventory, images["registry"]))
    return specs


REGISTRY_PORT = 5000  # inside its container (local); on the node's address (openstack)
REGISTRY_SECRETS = ("registry_password", "registry_tls_cert", "registry_tls_key")


def _registry_spec(site: Site, inventory: Inventory, image: str) -> ContainerSpec:
    """The image registry on the standalone node: builds push, the engines pull (TLS, htpasswd;
    image_registry.py has the rest). Its volume of images is a data volume (destroy --purge)."""
    standalone = inventory.of_role("standalone")[0]
    local = site.target == "local"
    port = REGISTRY_PORT if local else site.services.registry.port
    return ContainerSpec(
        name=container_name(site, "registry"),
        node=standalone.name,
        role="registry",
        image=image,
        engine=standalone.engine,
        env=(("REGISTRY_PORT", str(port)),),
        network=network_name(site) if local else "host",
        ip=local_address(site, standalone.engine, REGISTRY_HOST_INDEX) if local else None,
        hostname=container_name(site, "registry") if local else None,
        ports=((REGISTRY_PORT, "127.0.0.1", site.services.registry.port),) if local else (),
        volumes=((volume_name(site, "registry"), "/var/lib/docker-registry"),),
        secrets=REGISTRY_SECRETS,
        site=site.name,
    )


def _router_spec(site: Site, inventory: Inventory, image: str) -> ContainerSpec:
    """The app router: on the site network (it reads etcd there); the envs package attaches it to
    the apps' overlay network too, where it resolves the app services by name."""
    standalone = inventory.of_role("standalone")[0]
    local = site.target == "local"
    name = container_name(site, "router")
    return ContainerSpec(
        name=name,
        node=standalone.name,
        role="router",
        image=image,
        engine=standalone.engine,
        env=(
            ("ETCD_URL", etcd_url_in_cluster(site, inventory, standalone)),
            ("ETCD_PREFIX", site.services.etcd.prefix),
            ("APPS_DOMAIN", apps_domain(site)),
            ("LISTEN_PORT", str(ROUTER_PORT)),
            ("APPS_SERVICE_PREFIX", f"cidemo-{site.name}-app-"),  # platforms/swarm.service_name
        ),
        tls_files=etcd_client_tls_files("router"),
        # openstack: the default bridge, since containers on the host network cannot join overlays
        network=network_name(site) if local else None,
        ip=local_address(site, standalone.engine, ROUTER_HOST_INDEX) if local else None,
        hostname=name,
        ports=(
            ((ROUTER_PORT, "127.0.0.1", site.environments.router_port),)
            if local
            else ((ROUTER_PORT, "0.0.0.0", 80),)
        ),
        site=site.name,
    )


# local target: reserved addresses of the subnet (the nodes start at 10). etcd moved from 5 to 8
# with TLS: while a plain-HTTP site converges, a bridge holds 5 for the containers not yet replaced.
LEGACY_ETCD_HOST_INDEX = 5
JENKINS_HOST_INDEX = 6
ROUTER_HOST_INDEX = 7
ETCD_HOST_INDEX = 8
REGISTRY_HOST_INDEX = 9


def etcd_client_tls_files(component: str) -> tuple[tuple[str, str], ...]:
    """The site CA and `component`'s own etcd client certificate, as the images expect them."""
    return (
        ("ca.pem", "ca.pem"),
        ("etcd-client.pem", f"clients/{component}/cert.pem"),
        ("etcd-client-key.pem", f"clients/{component}/key.pem"),
    )


def etcd_server_tls_files() -> tuple[tuple[str, str], ...]:
    return (
        ("ca.pem", "ca.pem"),
        ("server.pem", f"nodes/{ETCD_SERVER_NAME}/server-cert.pem"),
        ("server-key.pem", f"nodes/{ETCD_SERVER_NAME}/server-key.pem"),
    )


def mysql_server_tls_files(node: str) -> tuple[tuple[str, str], ...]:
    """A Galera member serves MySQL with its node's server certificate (CA in ca.pem)."""
    return (
        ("server.pem", f"nodes/{node}/server-cert.pem"),
        ("server-key.pem", f"nodes/{node}/server-key.pem"),
    )


def etcd_bridge_spec(site: Site, inventory: Inventory, image: str) -> ContainerSpec:
    """local target, upgrade only: plain HTTP on etcd's old address, forwarded over TLS with a
    client certificate of its own, for the containers that still speak plain HTTP until each is
    replaced. Never part of `desired_specs`; placed and removed by the upgrade."""
    standalone = inventory.of_role("standalone")[0]
    target = f"{local_address(site, standalone.engine, ETCD_HOST_INDEX)}:{ETCD_PORT}"
    tls = TLS_DIR_IN_CONTAINER
    return ContainerSpec(
        name=container_name(site, "etcd-bridge"),
        node=standalone.name,
        role="etcd-bridge",
        image=image,
        engine=standalone.engine,
        command=(
            "socat",
            f"TCP-LISTEN:{ETCD_PORT},fork,reuseaddr",
            f"OPENSSL:{target},cafile={tls}/ca.pem,cert={tls}/etcd-client.pem,"
            f"key={tls}/etcd-client-key.pem",
        ),
        network=network_name(site),
        ip=local_address(site, standalone.engine, LEGACY_ETCD_HOST_INDEX),
        hostname="etcd-bridge",
        tls_files=etcd_client_tls_files("etcd-bridge"),
        site=site.name,
    )


def local_address(site: Site, engine: str, index: int) -> str:
    """local target: the `index`-th host address of the site subnet on `engine`."""
    return str(next(itertools.islice(site.subnet_of(engine).hosts(), index - 1, None)))


def etcd_scheme(site: Site) -> str:
    """https with client certificates, except on the legacy profile's etcd2 (not hardened: the
    Deis v1 components on those nodes read etcd in plain HTTP)."""
    return "http" if site.target == "openstack" and site.node_os == "coreos-legacy" else "https"


def etcd_url_in_cluster(site: Site, inventory: Inventory, node: InventoryNode) -> str:
    """Where a container on `node` reaches etcd: the site's etcd container, or the node's own."""
    scheme = etcd_scheme(site)
    if site.target == "local":
        standalone = inventory.of_role("standalone")[0]
        return f"{scheme}://{local_address(site, standalone.engine, ETCD_HOST_INDEX)}:{ETCD_PORT}"
    return f"{scheme}://{node.private_ip}:{ETCD_PORT}"


def _service_spec(
    site: Site,
    inventory: Inventory,
    node: InventoryNode,
    role: str,
    image: str,
    extra_env: tuple[tuple[str, str], ...] = (),
    ports: tuple[tuple[int, int], ...] = (),
    volumes: tuple[tuple[str, str], ...] = (),
    secrets: tuple[str, ...] = (),
    tls_files: tuple[tuple[str, str], ...] = (),
) -> ContainerSpec:
    name = container_name(site, role, node.name if role == "galera" else None)
    local = site.target == "local"
    if not local:
        address, ip, bind = node.private_ip, None, node.private_ip
    elif role == "jenkins":
        address = ip = local_address(site, node.engine, JENKINS_HOST_INDEX)
        bind = "0.0.0.0"
    else:
        address, ip, bind = node.private_ip, node.private_ip, "0.0.0.0"
    env = (
        ("ETCD_URL", etcd_url_in_cluster(site, inventory, node)),
        ("ETCD_PREFIX", site.services.etcd.prefix),
        ("TTL", str(site.services.galera.ttl)),
        ("NODE_ADDRESS", address),
        ("BIND_ADDRESS", bind),
        ("CONTAINER_NAME", name),
        ("NODE_NAME", node.name),
        *extra_env,
    )
    return ContainerSpec(
        name=name,
        node=node.name,
        role=role,
        image=image,
        engine=node.engine,
        env=env,
        command=("sleep", "infinity") if role == "gateway" else (),
        network=network_name(site) if local else "host",
        ip=ip,
        hostname=name if local else None,
        ports=tuple((c, "127.0.0.1", h) for c, h in ports) if local else (),
        volumes=volumes,
        secrets=secrets,
        tls_files=tls_files,
        site=site.name,
    )


def quorum(members: int) -> int:
    return members // 2 + 1
