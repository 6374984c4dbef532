"""The site model: everything an operator decides about one installation, validated.

Pydantic checks shape and types (unknown keys are errors); `semantic_problems` checks the rules that
span several keys. Both report a key path so an operator can find the line to fix.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import string
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

ROLES: tuple[str, ...] = ("deis", "standalone")
RESERVED_HOSTS = 10  # the first addresses of the subnet stay free for the router, DHCP and the like
LOCAL_ENGINE_URL = "unix:///var/run/docker.sock"

Hostname = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
]
SiteName = Annotated[str, StringConstraints(pattern=r"^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$")]
DnsName = Annotated[
    str,
    StringConstraints(
        max_length=253,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
    ),
]
CloudName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ResourceName = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Role = Literal["deis", "standalone"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Network(_Strict):
    cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.213.7.0/24")
    external_network: ResourceName = Field(
        "public", description="external network that is also the floating-IP pool"
    )
    dns: list[ipaddress.IPv4Address] = Field(
        default_factory=lambda: [ipaddress.IPv4Address("9.9.9.9")]
    )
    existing_network: ResourceName | None = Field(
        None, description="attach to this existing network instead of creating one"
    )


class RoleSpec(_Strict):
    flavor: ResourceName | None = None
    image: ResourceName | None = None
    min_ram_mb: int = Field(2048, ge=512)
    min_disk_gb: int = Field(20, ge=1)
    min_vcpus: int = Field(1, ge=1)
    anti_affinity: Literal["hard", "soft"] | None = Field(
        None,
        description="deis only: hard (default; each node on its own hypervisor or the boot "
        "fails) or soft (spread when the cloud can)",
    )


class Engine(_Strict):
    url: str = Field(LOCAL_ENGINE_URL, pattern=r"^(unix|ssh|tcp)://.+")
    subnet: ipaddress.IPv4Network | None = Field(
        None, description="subnet of the site network on this engine; default network.cidr"
    )
    tls_dir: str | None = Field(
        None, description="for tcp://: directory with ca.pem, cert.pem, key.pem"
    )


class Node(_Strict):
    name: Hostname
    role: Role
    private_ip: ipaddress.IPv4Address | None = None
    engine: Hostname | None = Field(None, description="local target: key of `engines`")


class Ssh(_Strict):
    key_name: ResourceName = "cidemo"
    public_key_file: str | None = None
    public_key: str | None = None
    user: Hostname = "core"


class Docker(_Strict):
    transport: Literal["tls", "ssh"] = "tls"
    allow_plain_tcp: bool = Field(False, description="permit tcp:// without TLS (never for clouds)")


class Galera(_Strict):
    cluster_name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = "cidemo"
    members: int = 3
    sst_method: Literal["rsync", "mariabackup"] = "rsync"
    ttl: int = Field(10, ge=4, le=300)
    join_timeout: int = Field(300, ge=10, le=3600)
    auto_recovery: bool = Field(
        True,
        description="after a crash of every member, the members elect the most advanced one "
        "and bootstrap from it with no operator (false: cidemo recover only)",
    )
    recovery_wait: int = Field(
        120,
        ge=10,
        le=3600,
        description="seconds the members wait for every member's position before a majority "
        "suffices",
    )
    image: str | None = Field(
        None, description="override the image built from cidemo_infra/data/images/galera"
    )
    cpu_shares: int = Field(
        4096,
        ge=2,
        le=262144,
        description="CPU weight of each member (Docker's default is 1024, previews keep it): "
        "under contention a member gets this share against every preview on its node",
    )
    reserved_memory_mb: int = Field(
        1024,
        ge=0,
        le=1048576,
        description="memory each member keeps under pressure (a soft reservation; previews "
        "have hard limits and are killed first on out-of-memory)",
    )


class Proxy(_Strict):
    kind: Literal["haproxy", "maxscale"] = "haproxy"
    image: str | None = Field(None, description="required for maxscale: a site-supplied image")
    rw_port: int = Field(4006, ge=1, le=65535)
    ro_port: int = Field(4008, ge=1, le=65535)


class Jenkins(_Strict):
    enabled: bool = True
    image: str | None = Field(
        None, description="default: the project's image from cidemo_infra/data/images"
    )
    port: int = Field(8080, ge=1, le=65535)


class Etcd(_Strict):
    prefix: Annotated[str, StringConstraints(pattern=r"^(/[A-Za-z0-9_.-]+)*$")] = ""
    image: str | None = None
    port: int = Field(23790, ge=1, le=65535, description="local target: published on 127.0.0.1")


class Registry(_Strict):
    """The site's image registry (placed on the standalone node when `environments.build` is
    set): builds push there, every node pulls from there."""

    image: str | None = Field(
        None, description="default: the project's image (Debian's docker-registry)"
    )
    port: int = Field(
        5000, ge=1, le=65535, description="TLS port; local target: published on 127.0.0.1"
    )


class Services(_Strict):
    galera: Galera = Galera()
    proxy: Proxy = Proxy()
    jenkins: Jenkins = Jenkins()
    etcd: Etcd = Etcd()
    registry: Registry = Registry()


AppName = Annotated[str, StringConstraints(pattern=r"^[a-z]([a-z0-9-]{0,20}[a-z0-9])?$")]
Branch = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]{1,100}$")]
# an app named like another environment (`pr-5`: production's database is then PR 5's `pr_5`)
ENVIRONMENT_LIKE_APP = re.compile(r"^(stage-|pr-[0-9]+(-|$))")
# MariaDB's own databases: the production database is the app name with - -> _
SYSTEM_DATABASES = ("mysql", "sys", "information_schema", "performance_schema")


def app_name_problem(app: str) -> str | None:
    """Why `app` cannot name an app: its environments' or databases' names would be those of
    another environment, or of MariaDB's own databases; None when it can."""
    if ENVIRONMENT_LIKE_APP.match(app):
        return (
            f"'{app}' is named like an environment (stage-<app>, pr-<n>-<app>), so its "
            "environments or databases would collide with another's; choose a name that does "
            "not start with 'stage-' or 'pr-<n>'"
        )
    if app.replace("-", "_") in SYSTEM_DATABASES:
        return (
            f"'{app}' would make production's database one of MariaDB's own "
            f"({', '.join(SYSTEM_DATABASES)}); choose another name"
        )
    return None


class Limits(_Strict):
    cpus: float = Field(0.5, gt=0, le=64, description="CPUs (fractions allowed)")
    memory_mb: int = Field(256, ge=64, le=1048576, description="hard memory limit, no swap")


class PreviewLimits(_Strict):
    """Hard limits of each preview's app task and database container."""

    app: Limits = Limits(cpus=1.0, memory_mb=512)
    database: Limits = Limits(cpus=0.5, memory_mb=256)


RepoName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9_.-]{1,100}$")]
RelativePath = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_.@+-][A-Za-z0-9_.@+/-]{0,199}$")
]


class ForkLimits(_Strict):
    """What a build of a fork's pull request may use (its code is untrusted)."""

    cpus: float = Field(1.0, gt=0, le=64, description="CPUs of the build's and the tests' steps")
    memory_mb: int = Field(1024, ge=64, le=65536, description="memory of each step, MiB")
    timeout: int = Field(600, ge=10, le=86400, description="seconds the whole build may take")


class Build(_Strict):
    """How the platform builds an environment's image from a commit. A plain string is
    `source` (the demo's local app directory), as before."""

    source: str | None = Field(
        None,
        min_length=1,
        description="local target: the app's source directory, relative to the site file (the "
        "first run makes a git repository of it; provision builds `image` of its files' hash)",
    )
    repository_url: str | None = Field(
        None,
        pattern=r"^(https://|http://|git://|file://|/).+",
        description="clone URL `env up --build` fetches from (default: "
        "https://github.com/<environments.repository>.git); webhooks use the event's",
    )
    context: RelativePath = Field(".", description="build context, inside the repository")
    dockerfile: RelativePath = Field("Dockerfile", description="relative to the context")
    args: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], str] = (
        Field(default_factory=dict, description="build arguments (APP_VERSION is the commit)")
    )
    test_command: list[str] | None = Field(
        None, min_length=1, description="run in the built image; a non-zero exit deploys nothing"
    )
    node: Hostname | None = Field(None, description="node whose engine builds; default standalone")
    timeout: int = Field(1800, ge=10, le=86400, description="seconds a trusted build may take")
    fork: ForkLimits = ForkLimits()

    @field_validator("context", "dockerfile")
    @classmethod
    def _inside_the_repository(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError(f"'{value}' leaves the repository ('..'); give a path inside it")
        return value


class Environments(_Strict):
    """The delivery pipeline: previews per pull request, staging, production (Deis' naming:
    `pr-<n>-<app>`, `stage-<app>`, `<app>`)."""

    app: AppName = "ghost"
    platform: Literal["swarm", "deis"] = "swarm"
    image: str = Field(
        "{app}:{sha}", description="the image of a commit; {app} and {sha} are replaced"
    )
    app_port: int = Field(2368, ge=1, le=65535, description="the HTTP port the app listens on")
    domain: DnsName | None = Field(None, description="apps are <env>.<domain>; default: domain")
    max_previews: int = Field(5, ge=1, le=100)
    preview_ttl_hours: int = Field(168, ge=1, description="env gc removes previews idle longer")
    router_port: int = Field(8000, ge=1, le=65535, description="local: published on 127.0.0.1")
    staging_branch: Branch = "development"
    production_branch: Branch = "master"
    authorized_logins: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,39}$")]] = (
        Field(default_factory=list)
    )
    fork_label: str = "safe-to-deploy"
    repository: RepoName | None = Field(
        None,
        description="owner/name of the GitHub repository whose events deploy; required by "
        "`cidemo webhook serve`, events of other repositories change nothing",
    )
    backup_dir: str | None = Field(None, description="default: <state dir>/backups")
    backup_container: str | None = Field(
        None,
        min_length=1,
        description="OpenStack object-storage container for backups (on `cloud`); backup_dir "
        "is then only scratch space",
    )
    backup_keep: int = Field(7, ge=1, le=1000, description="newest backups kept per database")
    deis_controller: str | None = Field(None, pattern=r"^https?://.+")
    app_env: dict[str, str] = Field(
        default_factory=dict, description="non-secret settings given to every environment"
    )
    preview_limits: PreviewLimits = PreviewLimits()
    fork_data: Literal["schema", "seed", "anonymised"] = Field(
        "schema",
        description="what a fork's preview database holds: staging's schema with no rows, "
        "that schema filled by fork_script (seed), or staging's data rewritten by fork_script "
        "(anonymised)",
    )
    fork_script: str | None = Field(
        None,
        min_length=1,
        description="SQL file (relative to the site file) for fork_data seed or anonymised; "
        "it runs in the snapshot builder, never on the cluster",
    )
    build: Build | None = Field(
        None,
        description="build images from commits (webhooks, `env up --build`) and place the site "
        "registry; a string is `build.source`",
    )

    @field_validator("build", mode="before")
    @classmethod
    def _build_shorthand(cls, value: object) -> object:
        return {"source": value} if isinstance(value, str) else value


class Timeouts(_Strict):
    server_active: int = Field(600, ge=10, description="seconds for a server to become ACTIVE")
    docker: int = Field(300, ge=5, description="seconds for a node's Docker engine to answer")
    etcd: int = Field(300, ge=5, description="seconds for etcd to answer")
    health: int = Field(300, ge=5, description="seconds for a placed service to become healthy")
    terraform: int = Field(
        3600,
        ge=10,
        description="seconds one terraform command (plan, apply, destroy) may run before it is "
        "interrupted",
    )


def _default_roles() -> dict[Role, RoleSpec]:
    return {"deis": RoleSpec(min_ram_mb=4096), "standalone": RoleSpec()}


def _default_nodes() -> list[Node]:
    return [Node(name=f"deis-{i}", role="deis") for i in (1, 2, 3)] + [
        Node(name="standalone-1", role="standalone")
    ]


class Site(_Strict):
    name: SiteName
    target: Literal["local", "openstack"] = "local"
    node_os: Literal["flatcar", "coreos-legacy"] = "flatcar"
    domain: DnsName = "cidemo.test"
    cloud: CloudName | None = Field(
        None, description="clouds.yaml entry (openstack target; backup_container's object storage)"
    )
    network: Network = Network()
    admin_cidrs: list[ipaddress.IPv4Network] = Field(default_factory=list)
    ssh: Ssh = Ssh()
    docker: Docker = Docker()
    engines: dict[Hostname, Engine] = Field(
        default_factory=lambda: {"local": Engine()},
        description="local target: Docker engines the nodes map to",
    )
    roles: dict[Role, RoleSpec] = Field(default_factory=_default_roles)
    nodes: list[Node] = Field(default_factory=_default_nodes)
    services: Services = Services()
    environments: Environments = Environments()
    timeouts: Timeouts = Timeouts()

    def nodes_of(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    @property
    def engines_here(self) -> bool:
        """A local site whose engines all run on this machine: the tool prepares this host
        (the apps' firewall, the branch store); a cloud node's come with its cloud-config."""
        return self.target == "local" and all(
            e.url.startswith("unix://") for e in self.engines.values()
        )

    def private_ip(self, node: Node) -> ipaddress.IPv4Address:
        """The node's fixed private address: given, or the next free one after the reserved ones."""
        return self.private_ips()[node.name]

    def private_ips(self) -> dict[str, ipaddress.IPv4Address]:
        taken = {n.private_ip for n in self.nodes if n.private_ip is not None}
        pools: dict[ipaddress.IPv4Network, Iterator[ipaddress.IPv4Address]] = {}
        result: dict[str, ipaddress.IPv4Address] = {}
        for node in self.nodes:
            if node.private_ip is not None:
                result[node.name] = node.private_ip
                continue
            subnet = self.subnet_of(self.engine_of(node))
            if subnet not in pools:
                free = (h for h in subnet.hosts() if h not in taken)
                pools[subnet] = itertools.islice(free, RESERVED_HOSTS - 1, None)
            result[node.name] = next(pools[subnet])
        return result

    def engine_of(self, node: Node) -> str:
        return node.engine or next(iter(self.engines))

    def subnet_of(self, engine: str | None) -> ipaddress.IPv4Network:
        spec = self.engines.get(engine) if self.target == "local" and engine else None
        return spec.subnet if spec is not None and spec.subnet is not None else self.network.cidr


def semantic_problems(site: Site) -> list[str]:
    """Rules that span several keys; each problem is `key.path: what is wrong; what is valid`."""
    problems: list[str] = []
    for role in ROLES:
        if not site.nodes_of(role):
            problems.append(
                f"nodes: role '{role}' has no nodes; every role ({', '.join(ROLES)}) "
                "needs at least one"
            )
    seen: dict[str, int] = {}
    for i, node in enumerate(site.nodes):
        if node.name in seen:
            problems.append(
                f"nodes[{i}].name: '{node.name}' duplicates nodes[{seen[node.name]}]; "
                "node names must be unique"
            )
        seen.setdefault(node.name, i)

    problems += _network_problems(site)
    members = site.services.galera.members
    deis = len(site.nodes_of("deis"))
    if members < 3 or members % 2 == 0:
        problems.append(
            f"services.galera.members: {members} is not valid; a Galera cluster needs "
            "an odd number of members, at least 3 (3, 5, 7, ...)"
        )
    elif members > deis:
        problems.append(
            f"services.galera.members: {members} members need {members} deis nodes, "
            f"the site has {deis}"
        )
    envs = site.environments
    app_problem = app_name_problem(envs.app)
    if app_problem:
        problems.append(f"environments.app: {app_problem}")
    if envs.platform == "deis" and not envs.deis_controller:
        problems.append(
            "environments.deis_controller: required when environments.platform is 'deis' "
            "(the controller's URL, e.g. https://deis.example.com)"
        )
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(envs.image) if f is not None}
    except ValueError:
        fields = {"(unbalanced braces)"}
    unknown = sorted(fields - {"app", "sha"})
    if unknown:
        problems.append(
            f"environments.image: '{envs.image}' has the unknown placeholder {{{unknown[0]}}}; "
            "valid: {app}, {sha}"
        )
    if envs.fork_data != "schema" and not envs.fork_script:
        problems.append(
            f"environments.fork_script: required when environments.fork_data is "
            f"'{envs.fork_data}' (an SQL file relative to the site file); or use fork_data: schema"
        )
    if envs.fork_script and envs.fork_data == "schema":
        problems.append(
            "environments.fork_script: only for fork_data seed or anonymised (fork_data is "
            "'schema': forks get staging's tables with no rows)"
        )
    if envs.build and envs.build.source and site.target != "local":
        problems.append(
            "environments.build.source: only for target local (a cloud builds from the "
            "repository: give environments.build.repository_url or environments.repository)"
        )
    container = envs.backup_container
    if container and ("/" in container or len(container.encode()) > 256):
        problems.append(
            f"environments.backup_container: {container!r} is not a container name "
            "(1 to 256 bytes, no '/')"
        )
    if container and not site.cloud:
        problems.append(
            "environments.backup_container: needs `cloud`, the clouds.yaml entry whose object "
            "storage holds the container (any target)"
        )
    proxy = site.services.proxy
    if proxy.kind == "maxscale" and not proxy.image:
        problems.append(
            "services.proxy.image: required when services.proxy.kind is 'maxscale' "
            "(MaxScale is not built by this project; name a site-supplied image)"
        )
    if proxy.rw_port == proxy.ro_port:
        problems.append(
            f"services.proxy.ro_port: {proxy.ro_port} is also rw_port; the read-write "
            "and read-only ports must differ"
        )
    if site.target == "openstack":
        problems += _openstack_problems(site)
    else:
        problems += _local_problems(site)
    return problems


def _network_problems(site: Site) -> list[str]:
    problems: list[str] = []
    cidr = site.network.cidr
    if cidr.prefixlen > 28:
        return [
            f"network.cidr: {cidr} is too small; use a prefix of /28 or shorter "
            f"(room for {RESERVED_HOSTS} reserved addresses and the nodes)"
        ]
    room = cidr.num_addresses - 2 - RESERVED_HOSTS
    if len(site.nodes) > room:
        problems.append(
            f"network.cidr: {cidr} has room for {room} nodes after the reserved "
            f"addresses, the site has {len(site.nodes)}"
        )
    seen: dict[ipaddress.IPv4Address, int] = {}
    for i, node in enumerate(site.nodes):
        ip = node.private_ip
        if ip is None:
            continue
        subnet = site.subnet_of(node.engine) if site.target == "local" else cidr
        if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
            problems.append(f"nodes[{i}].private_ip: {ip} is not a host address of {subnet}")
        elif ip == next(subnet.hosts()):
            problems.append(
                f"nodes[{i}].private_ip: {ip} is the gateway of {subnet}; choose another address"
            )
        if ip in seen:
            problems.append(f"nodes[{i}].private_ip: {ip} is also nodes[{seen[ip]}].private_ip")
        seen.setdefault(ip, i)
    return problems


def _openstack_problems(site: Site) -> list[str]:
    problems: list[str] = []
    if not site.cloud:
        problems.append(
            "cloud: required for target 'openstack'; name the clouds.yaml entry "
            "(credentials stay in clouds.yaml, never in the site file)"
        )
    if not site.ssh.public_key and not site.ssh.public_key_file:
        problems.append("ssh.public_key_file: required for target 'openstack' (or ssh.public_key)")
    standalone = site.roles.get("standalone")
    if standalone is not None and standalone.anti_affinity is not None:
        problems.append(
            "roles.standalone.anti_affinity: only the deis nodes share a server group; "
            "set roles.deis.anti_affinity"
        )
    for role in ROLES:
        spec = site.roles.get(role)  # type: ignore[call-overload]
        for key in ("flavor", "image"):
            if spec is None or getattr(spec, key) is None:
                problems.append(f"roles.{role}.{key}: required for target 'openstack'")
    for i, node in enumerate(site.nodes):
        if node.engine is not None:
            problems.append(
                f"nodes[{i}].engine: only for target 'local'; on openstack the "
                "engine is the node's own"
            )
    return problems


def _local_problems(site: Site) -> list[str]:
    problems: list[str] = []
    for i, node in enumerate(site.nodes):
        key = site.engine_of(node)
        if key not in site.engines:
            problems.append(
                f"nodes[{i}].engine: '{key}' is not a key of engines; valid: "
                f"{', '.join(site.engines)}"
            )
    for name, engine in site.engines.items():
        if (
            engine.url.startswith("tcp://")
            and not engine.tls_dir
            and not site.docker.allow_plain_tcp
        ):
            problems.append(
                f"engines.{name}.url: plain tcp:// is refused; give engines.{name}."
                "tls_dir or set docker.allow_plain_tcp: true"
            )
        if engine.subnet is not None and not engine.subnet.subnet_of(site.network.cidr):
            problems.append(
                f"engines.{name}.subnet: {engine.subnet} is not inside network.cidr "
                f"{site.network.cidr}"
            )
    return problems
