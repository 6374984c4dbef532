"""Before Terraform runs: every way the cloud falls short of the site, listed at once.

Each problem is one line that starts with the site key to change and says what the cloud offers
instead. Preflight only reads: it creates nothing, so a failing preflight leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from cidemo_infra.cloud.connect import cloud_errors, redact
from cidemo_infra.cloud.sweep import find
from cidemo_infra.errors import CloudError, SiteError
from cidemo_infra.render.tfvars import has_deis_builder, read_public_key, registry_port
from cidemo_infra.site import ROLES, Site
from cidemo_infra.site.model import RoleSpec

if TYPE_CHECKING:
    from openstack.connection import Connection

# data/terraform/security.tf's locals, mirrored (tests/unit/test_cloud_units.py compares them with
# the module): each entry is one ingress rule the module creates for every site.
PUBLIC_WORLD_TCP_PORTS: dict[str, int] = {"http": 80, "https": 443}
DEIS_BUILDER_PORTS: dict[str, int] = {"deis_builder": 2222}  # only where the builder runs
CLUSTER_PORTS: dict[str, tuple[str, int]] = {
    "etcd_client": ("tcp", 2379),
    "etcd_peer": ("tcp", 2380),
    "docker_tls": ("tcp", 2376),
    "galera_mysql": ("tcp", 3306),
    "galera_sst": ("tcp", 4444),
    "galera_replication": ("tcp", 4567),
    "galera_ist": ("tcp", 4568),
    "flannel_vxlan": ("udp", 8472),
    "swarm_manager": ("tcp", 2377),
    "swarm_gossip_tcp": ("tcp", 7946),
    "swarm_gossip_udp": ("udp", 7946),
    "swarm_overlay_vxlan": ("udp", 4789),
    "proxy_read_write": ("tcp", 4006),
    "proxy_read_only": ("tcp", 4008),
    "jenkins_http": ("tcp", 8080),
}
SECURITY_GROUPS = ("public", "cluster")
# Neutron gives every new group an IPv4 and an IPv6 egress rule (the module keeps them)
DEFAULT_EGRESS_RULES = 2
# a created network also gets a router interface port and a DHCP port in the project
NETWORK_PORTS = 2
LISTED = 12  # names shown when listing what the cloud offers


@dataclass(frozen=True)
class FlavorSize:
    name: str
    ram: int
    vcpus: int
    disk: int

    def describe(self) -> str:
        return f"{self.name} ({self.ram} MB, {self.vcpus} vCPU, {self.disk} GB)"


@dataclass(frozen=True)
class Quota:
    """One quota: limit -1 is unlimited."""

    limit: int
    used: int
    reserved: int = 0

    @property
    def free(self) -> int | None:
        return None if self.limit < 0 else max(0, self.limit - self.used - self.reserved)


@dataclass(frozen=True)
class Need:
    """How much of one quota the site still needs, and the site key that drives it."""

    quota: str
    amount: int
    key: str
    what: str


class PreflightError(CloudError):
    """The cloud cannot take the site; `problems` lists every reason, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "preflight failed"
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{first}{more}")


def check(
    site: Site,
    conn: Connection,
    public_key: str | None = None,
    managed_keypairs: Collection[str] = (),
) -> None:
    """`preflight`, raising `PreflightError` when there is any problem."""
    problems = preflight(site, conn, public_key, managed_keypairs)
    if problems:
        raise PreflightError(problems)


def preflight(
    site: Site,
    conn: Connection,
    public_key: str | None = None,
    managed_keypairs: Collection[str] = (),
) -> list[str]:
    """Every problem that would make `terraform apply` fail on this cloud, one line each.

    `public_key` is the site's SSH public key; by default it is read from the site.
    `managed_keypairs`: keypair names the site's Terraform state already holds (an existing
    keypair of another name would make Terraform's create fail with 409).
    """
    cloud = conn.config.name
    try:
        conn.authorize()
    except (sdk.SDKException, ksa.ClientException) as exc:
        return [
            f"cloud: the credentials of cloud '{cloud}' do not work: {redact(_short(exc), conn)}"
        ]

    with cloud_errors(conn, "preflight"):
        flavors = {
            f.name: FlavorSize(f.name, f.ram, f.vcpus, f.disk)
            for f in conn.compute.flavors(details=True)
        }
        images = list(conn.image.images())
        problems = image_problems(site, images, cloud)
        problems += flavor_problems(site, flavors, {i.name: i for i in images}, cloud)
        problems += _network_problems(site, conn, cloud)
        keypair_exists, key_problems = _keypair_problems(site, conn, public_key, managed_keypairs)
        problems += key_problems

        existing = {(leak.kind, leak.name) for leak in find(conn, site.name)}
        needs = quota_needs(site, flavors, existing, keypair_exists=keypair_exists)
        project = conn.config.auth.get("project_name") or conn.current_project_id
        where = f"project '{project}' on cloud '{cloud}'"
        problems += quota_problems(needs, _quotas(conn), where)
    return problems


def security_group_rule_count(site: Site) -> int:
    """The rules data/terraform/security.tf declares for this site (without Neutron's defaults)."""
    admins = {str(cidr) for cidr in site.admin_cidrs}
    ssh_sources = len(admins) or 1  # SSH from the world only when no admin CIDR is named
    docker_tls_admin = len(admins)
    world = len(PUBLIC_WORLD_TCP_PORTS) + (len(DEIS_BUILDER_PORTS) if has_deis_builder(site) else 0)
    cluster = len(CLUSTER_PORTS) + (1 if registry_port(site) else 0)  # the registry's, when placed
    return world + ssh_sources + cluster + docker_tls_admin


def quota_needs(
    site: Site,
    flavors: Mapping[str, FlavorSize],
    existing: Collection[tuple[str, str]] = (),
    keypair_exists: bool = False,
) -> list[Need]:
    """What `terraform apply` still creates, per quota; `existing` are (kind, name) already there.

    Resources the site already has (a re-run, or a half-applied site) need no new quota.
    """

    def missing(kind: str, name: str) -> bool:
        return (kind, f"{site.name}-{name}") not in existing

    new_servers = [n for n in site.nodes if missing("server", n.name)]
    need: list[Need] = []

    def add(quota: str, amount: int, key: str, what: str) -> None:
        if amount > 0:
            need.append(Need(quota, amount, key, what))

    add("instances", len(new_servers), "nodes", _count(len(new_servers), "server"))
    sized = [(n, flavors.get(_spec(site, n.role).flavor or "")) for n in new_servers]
    sized_nodes = [(n, f) for n, f in sized if f is not None]
    roles = sorted({n.role for n, _ in sized_nodes}, key=ROLES.index)
    flavor_keys = ", ".join(f"roles.{r}.flavor" for r in roles)
    servers = _count(len(sized_nodes), "server")
    add("cores", sum(f.vcpus for _, f in sized_nodes), flavor_keys, f"vCPUs of {servers}")
    add("ram", sum(f.ram for _, f in sized_nodes), flavor_keys, f"MB RAM of {servers}")
    new_deis = [n for n in new_servers if n.role == "deis"]
    if new_deis and missing("server_group", "deis"):
        add("server_groups", 1, "nodes", f"anti-affinity group {site.name}-deis")
    members = len(site.nodes_of("deis")) if new_deis else 0
    add("server_group_members", members, "nodes", "Deis nodes in one anti-affinity group")

    fips = [n for n in site.nodes if missing("floating_ip", n.name)]
    add("floating_ips", len(fips), "nodes", _count(len(fips), "floating IP"))
    creates_network = site.network.existing_network is None
    ports = len([n for n in site.nodes if missing("port", n.name)])
    if creates_network and missing("network", "net"):
        ports += NETWORK_PORTS
    add("ports", ports, "nodes", "one per node, plus the router interface and DHCP")

    groups = [g for g in SECURITY_GROUPS if missing("security_group", g)]
    add("security_groups", len(groups), "name", ", ".join(f"{site.name}-{g}" for g in groups))
    rules = security_group_rule_count(site) if groups else 0
    add(
        "security_group_rules",
        rules + DEFAULT_EGRESS_RULES * len(groups),
        "admin_cidrs",
        "the module's rules and Neutron's default egress rules",
    )
    if creates_network:
        for quota, kind, suffix in (
            ("networks", "network", "net"),
            ("subnets", "subnet", "subnet"),
            ("routers", "router", "router"),
        ):
            if missing(kind, suffix):
                add(quota, 1, "network.existing_network", f"{site.name}-{suffix}; or use one")
    if not keypair_exists:
        add("keypairs", 1, "ssh.key_name", f"keypair {site.ssh.key_name}")
    return need


def quota_problems(needs: Iterable[Need], quotas: Mapping[str, Quota], where: str) -> list[str]:
    problems = []
    for need in needs:
        quota = quotas.get(need.quota)
        if quota is None or quota.free is None or need.amount <= quota.free:
            continue
        reserved = f", reserved {quota.reserved}" if quota.reserved else ""
        problems.append(
            f"{need.key}: needs {need.amount} more {need.quota} ({need.what}); {where} has "
            f"{quota.free} left (quota {quota.limit}, in use {quota.used}{reserved})"
        )
    return problems


def fitting_flavors(
    flavors: Iterable[FlavorSize], min_ram: int, min_disk: int, min_vcpus: int
) -> list[str]:
    fit = [f for f in flavors if f.ram >= min_ram and f.disk >= min_disk and f.vcpus >= min_vcpus]
    return [f.name for f in sorted(fit, key=lambda f: (f.vcpus, f.ram, f.disk, f.name))]


def same_public_key(a: str, b: str) -> bool:
    """Type and key material equal; the comment does not matter."""
    return a.split()[:2] == b.split()[:2]


def image_problems(site: Site, images: Sequence[Any], cloud: str) -> list[str]:
    active = sorted({i.name for i in images if i.status == "active" and i.name})
    offer = f"images on cloud '{cloud}': {_listing(active)}"
    problems = []
    for role in _roles_in_use(site):
        key = f"roles.{role}.image"
        name = _spec(site, role).image
        if name is None:
            problems.append(f"{key}: not set; {offer}")
            continue
        named = [i for i in images if i.name == name]
        by_id = [i for i in images if i.id == name]
        if not named and by_id:
            problems.append(
                f"{key}: '{name}' is the ID of image '{by_id[0].name}'; the module looks images "
                f"up by name, use '{by_id[0].name}'"
            )
        elif not named:
            problems.append(f"{key}: no image '{name}'; {offer}")
        elif len(named) > 1:
            problems.append(
                f"{key}: {len(named)} images are named '{name}'; the module needs a unique name "
                "(rename or delete the others)"
            )
        elif named[0].status != "active":
            problems.append(f"{key}: image '{name}' is {named[0].status}, not active; {offer}")
    return problems


def flavor_problems(
    site: Site, flavors: Mapping[str, FlavorSize], images: Mapping[str, Any], cloud: str
) -> list[str]:
    problems = []
    for role in _roles_in_use(site):
        spec = _spec(site, role)
        key = f"roles.{role}.flavor"
        wanted = (
            f"roles.{role} needs min_ram_mb {spec.min_ram_mb}, min_disk_gb {spec.min_disk_gb}, "
            f"min_vcpus {spec.min_vcpus}"
        )
        fit = fitting_flavors(flavors.values(), spec.min_ram_mb, spec.min_disk_gb, spec.min_vcpus)
        fits = f"flavors that fit: {_listing(fit)}" if fit else "no flavor on the cloud fits"
        flavor = flavors.get(spec.flavor or "")
        if flavor is None:
            offer = _listing(sorted(f.describe() for f in flavors.values()))
            what = f"no flavor '{spec.flavor}'" if spec.flavor else "not set"
            problems.append(f"{key}: {what} on cloud '{cloud}'; flavors: {offer}")
            continue
        short = []
        if flavor.ram < spec.min_ram_mb:
            short.append(f"{flavor.ram} MB RAM")
        if flavor.disk < spec.min_disk_gb:
            short.append(f"{flavor.disk} GB disk")
        if flavor.vcpus < spec.min_vcpus:
            short.append(f"{flavor.vcpus} vCPU")
        if short:
            problems.append(f"{key}: '{flavor.name}' has only {', '.join(short)}; {wanted}; {fits}")
        image = images.get(spec.image or "")
        if image is not None:
            if (image.min_disk or 0) > flavor.disk:
                problems.append(
                    f"{key}: '{flavor.name}' has {flavor.disk} GB disk, image '{image.name}' "
                    f"needs min_disk {image.min_disk} GB"
                )
            if (image.min_ram or 0) > flavor.ram:
                problems.append(
                    f"{key}: '{flavor.name}' has {flavor.ram} MB RAM, image '{image.name}' "
                    f"needs min_ram {image.min_ram} MB"
                )
    return problems


def _network_problems(site: Site, conn: Connection, cloud: str) -> list[str]:
    problems = []
    externals = sorted({n.name for n in conn.network.networks(is_router_external=True)})
    offer = f"external networks on cloud '{cloud}': {_listing(externals)}"
    name = site.network.external_network
    named = list(conn.network.networks(name=name))
    if not named:
        problems.append(f"network.external_network: no network '{name}'; {offer}")
    elif not any(n.is_router_external for n in named):
        problems.append(f"network.external_network: '{name}' is not an external network; {offer}")
    elif len([n for n in named if n.is_router_external]) > 1:
        problems.append(f"network.external_network: several external networks are named '{name}'")

    existing = site.network.existing_network
    if existing is not None:
        matches = list(conn.network.networks(name=existing))
        if not matches:
            visible = sorted({n.name for n in conn.network.networks() if n.name})
            problems.append(
                f"network.existing_network: no network '{existing}'; networks: {_listing(visible)}"
            )
        elif len(matches) > 1:
            problems.append(f"network.existing_network: several networks are named '{existing}'")
        else:
            cidr = str(site.network.cidr)
            subnets = list(conn.network.subnets(network_id=matches[0].id))
            if not any(s.cidr == cidr for s in subnets):
                have = _listing(sorted(str(s.cidr) for s in subnets))
                problems.append(
                    f"network.cidr: {cidr} is no subnet of network '{existing}' "
                    f"(network.existing_network); its subnets: {have}"
                )
    return problems


def _keypair_problems(
    site: Site, conn: Connection, public_key: str | None, managed: Collection[str]
) -> tuple[bool, list[str]]:
    name = site.ssh.key_name
    try:
        keypair = conn.compute.find_keypair(name, ignore_missing=False)
    except sdk.NotFoundException:
        keypair = None
    if public_key is None:
        try:
            public_key = read_public_key(site, "site")
        except SiteError as exc:
            return keypair is not None, list(exc.problems)
    if keypair is not None and not same_public_key(keypair.public_key or "", public_key):
        return True, [
            f"ssh.key_name: keypair '{name}' already exists on cloud '{conn.config.name}' with a "
            f"different public key (fingerprint {keypair.fingerprint}); choose another key_name "
            "or delete that keypair"
        ]
    if keypair is not None and name not in managed:
        return True, [
            f"ssh.key_name: keypair '{name}' already exists on cloud '{conn.config.name}' and "
            "this site's Terraform state does not hold it, so Terraform's create would fail "
            "(409); choose another key_name, delete that keypair, or adopt it with `terraform "
            f"-chdir=<state>/terraform import openstack_compute_keypair_v2.site {name}`"
        ]
    return keypair is not None, []


def terraform_keypairs(terraform_dir: Path) -> set[str]:
    """Names of the keypairs the site's (local) Terraform state holds; none without a state."""
    try:
        state = json.loads((terraform_dir / "terraform.tfstate").read_text())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise CloudError(f"{terraform_dir / 'terraform.tfstate'}: unreadable ({exc})") from None
    return {
        str(instance.get("attributes", {}).get("name"))
        for resource in state.get("resources", [])
        if resource.get("type") == "openstack_compute_keypair_v2"
        and resource.get("mode") == "managed"
        for instance in resource.get("instances", [])
    }


def _quotas(conn: Connection) -> dict[str, Quota]:
    limits = conn.compute.get_limits().absolute
    quotas = {
        "instances": Quota(limits.instances, limits.instances_used),
        "cores": Quota(limits.total_cores, limits.total_cores_used),
        "ram": Quota(limits.total_ram, limits.total_ram_used),
        "server_groups": Quota(limits.server_groups, limits.server_groups_used),
        "server_group_members": Quota(limits.server_group_members, 0),
        "keypairs": Quota(limits.keypairs, len(list(conn.compute.keypairs()))),
    }
    project = conn.current_project_id
    if project is None:
        raise CloudError(f"cloud '{conn.config.name}': the token is not scoped to a project")
    details = conn.network.get_quota(project, details=True)
    for name in (
        "floating_ips",
        "ports",
        "security_groups",
        "security_group_rules",
        "networks",
        "subnets",
        "routers",
    ):
        value = getattr(details, name, None)
        if isinstance(value, dict) and "limit" in value:
            quotas[name] = Quota(value["limit"], value.get("used", 0), value.get("reserved", 0))
    return quotas


def _roles_in_use(site: Site) -> list[str]:
    return [role for role in ROLES if site.nodes_of(role)]


def _spec(site: Site, role: str) -> RoleSpec:
    """The role's settings; a role left out of the site file has no flavor or image."""
    return site.roles.get(role) or RoleSpec()  # type: ignore[call-overload]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _listing(names: Sequence[str]) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - LISTED} more)" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
