"""The commands' work, target by target: render, plan, provision, destroy, status, smoke, recover.

Planning is pure (placement.plan, render); only the executors called from here touch the world.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import docker
import docker.errors

from cidemo_infra import app_image, image_registry
from cidemo_infra import images as project_images
from cidemo_infra.checks.report import Report
from cidemo_infra.checks.smoke import SmokeContext, run_smoke
from cidemo_infra.console import Reporter
from cidemo_infra.engines import client_for, engine_error, unique_clients
from cidemo_infra.errors import CloudError, EngineError, PlacementError, UsageError
from cidemo_infra.galera.member import member_status
from cidemo_infra.galera.recovery import choose_bootstrap, move_guard, read_position
from cidemo_infra.inventory import Inventory
from cidemo_infra.placement import branch_store, firewall
from cidemo_infra.placement.apply import Executor
from cidemo_infra.placement.observe import observe
from cidemo_infra.placement.plan import Action, diff
from cidemo_infra.placement.specs import (
    ETCD_HOST_INDEX,
    ETCD_SERVER_NAME,
    JENKINS_PORT,
    LABEL_SITE,
    PROXY_RO_PORT,
    PROXY_RW_PORT,
    REGISTRY_PORT,
    ContainerSpec,
    apps_domain,
    container_name,
    desired_specs,
    etcd_bridge_spec,
    etcd_scheme,
    has_registry,
    has_router,
    image_refs,
    local_address,
    network_specs,
    roles_by_engine,
    site_cidrs,
)
from cidemo_infra.placement.teardown import remove_site_apps
from cidemo_infra.registry.keys import EtcdTls, Registry, guard_key
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir
from cidemo_infra.targets.local import local_inventory
from cidemo_infra.tls.pki import ETCD_COMPONENTS, ensure_pki
from cidemo_infra.tunnel import ExecTunnel

SECRETS = {  # name in the state dir -> environment variable that may supply it instead
    "root_password": "CIDEMO_DB_ROOT_PASSWORD",
    "sst_password": "CIDEMO_DB_SST_PASSWORD",
    "monitor_password": "CIDEMO_DB_MONITOR_PASSWORD",
    "jenkins_admin_password": "CIDEMO_JENKINS_ADMIN_PASSWORD",
}


@dataclass
class PlanResult:
    actions: list[Action] = field(default_factory=list)
    infrastructure: list[dict[str, str]] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.actions or self.infrastructure)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"actions": [a.as_dict() for a in self.actions]}
        if self.infrastructure:
            out["infrastructure"] = self.infrastructure
        return out

    def print(self, reporter: Reporter) -> None:
        if not self.has_changes:
            reporter.line("no changes: the site is converged (0 actions)")
            return
        if self.infrastructure:
            reporter.table(
                ["resource", "action"], [[c["address"], c["action"]] for c in self.infrastructure]
            )
        if self.actions:
            reporter.table(
                ["node", "role", "action", "name", "reason"],
                [[a.node, a.role, a.kind, a.name, a.reason] for a in self.actions],
            )
        reporter.line(f"{len(self.infrastructure) + len(self.actions)} action(s)")


def render(site: Site, state: StateDir, site_path: str) -> list[Path]:
    if site.target != "openstack":
        raise UsageError(
            f"site '{site.name}' has target {site.target}: there are no Terraform "
            "inputs or cloud-config to render (use an openstack site)"
        )
    from cidemo_infra.render.site_files import render_site  # jinja2, the PKI: openstack only

    return render_site(site, state, site_path)


def _inventory(site: Site, state: StateDir) -> Inventory:
    if site.target == "local":
        return local_inventory(site)
    saved = Inventory.load(state.inventory_file)
    if saved is None:
        raise UsageError(
            f"site '{site.name}' has no inventory yet ({state.inventory_file}); "
            "run cidemo provision first"
        )
    return saved


def _clients(site: Site, inventory: Inventory, wait: float = 0) -> dict[str, docker.DockerClient]:
    """A client per engine; with `wait`, engines that do not answer yet (nodes still booting) are
    retried until that many seconds have passed."""
    clients: dict[str, docker.DockerClient] = {}
    deadline = time.monotonic() + wait
    for node in inventory.nodes:
        while node.engine not in clients:
            try:
                clients[node.engine] = client_for(
                    node.docker_url, node.tls_dir, site.docker.allow_plain_tcp, node=node.name
                )
            except EngineError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(2)
    return clients


def _secrets(state: StateDir) -> dict[str, str]:
    return {name: state.secret(name, env) for name, env in SECRETS.items()}


def _resolve_images(
    site: Site,
    inventory: Inventory,
    clients: dict[str, docker.DockerClient],
    reporter: Reporter,
    build: bool,
) -> dict[str, str]:
    refs = image_refs(site)
    project = {
        role: ref.removeprefix(project_images.PROJECT_PREFIX)
        for role, ref in refs.items()
        if project_images.is_project_image(ref)
    }
    placed = roles_by_engine(site, inventory)
    if build:
        needs = {e: {project[r] for r in roles if r in project} for e, roles in placed.items()}
        tags = project_images.ensure_images(clients, needs, reporter)
    else:
        base = project_images.planned_base(next(iter(clients.values())))
        tags = {
            name: project_images.image_tag(name, project_images.own_base(name) or base)
            for name in project.values()
        }
    resolved = {role: tags[project[role]] if role in project else ref for role, ref in refs.items()}
    if build:
        for engine, roles in placed.items():
            pulled = [resolved[r] for r in roles if r in resolved and r not in project]
            _pull_missing({engine: clients[engine]}, pulled, reporter)
    return resolved


def _pull_missing(
    clients: dict[str, docker.DockerClient], refs: list[str], reporter: Reporter
) -> None:
    for engine, client in clients.items():
        for ref in refs:
            try:
                client.images.get(ref)
            except docker.errors.ImageNotFound:
                with reporter.progress(f"pulling {ref} on engine {engine}"):
                    try:
                        client.images.pull(ref)
                    except docker.errors.APIError as exc:
                        raise EngineError(
                            f"engine {engine}: image {ref} is not present and "
                            f"cannot be pulled: {exc.explanation or exc}"
                        ) from None


INFRA_ROLES = ("network", "etcd", "gateway")  # placed before anything that needs etcd
SERVICE_PORTS = {"etcd": 2379, "rw": PROXY_RW_PORT, "ro": PROXY_RO_PORT, "jenkins": JENKINS_PORT}


@dataclass
class Session:
    """Everything one command needs to plan and act on the placed services."""

    site: Site
    state: StateDir
    inventory: Inventory
    clients: dict[str, docker.DockerClient]
    reporter: Reporter
    images: dict[str, str]
    _tunnels: dict[str, ExecTunnel] = field(default_factory=dict)
    _registry: Registry | None = None

    @property
    def specs(self) -> list[ContainerSpec]:
        return desired_specs(self.site, self.inventory, self.images)

    def actions(self) -> list[Action]:
        node_engines = {n.name: n.engine for n in self.inventory.nodes}
        observed, observed_networks = observe(self.site.name, self.clients, node_engines)
        observed = [o for o in observed if o.role not in ("galera-position", "etcd-bridge")]
        return diff(self.specs, network_specs(self.site), observed, observed_networks)

    def endpoint(self, service: str) -> tuple[str, int]:
        """Where the tool reaches `service` (etcd, rw, ro, jenkins) from this machine."""
        site = self.site
        if site.target == "local":
            proxy = site.services.proxy
            ports = {
                "etcd": site.services.etcd.port,
                "rw": proxy.rw_port,
                "ro": proxy.ro_port,
                "jenkins": site.services.jenkins.port,
            }
            return "127.0.0.1", ports[service]
        if service not in self._tunnels:
            standalone = self.inventory.of_role("standalone")[0]
            self._tunnels[service] = ExecTunnel(
                self.clients[standalone.engine],
                container_name(site, "gateway"),
                f"{standalone.private_ip}:{SERVICE_PORTS[service]}",
                standalone.name,
            )
        return self._tunnels[service].address

    def registry(self) -> Registry:
        """The tool's one etcd client (https, the operator's client certificate), kept for the
        session so that its pooled TLS connections are reused."""
        if self._registry is None:
            host, port = self.endpoint("etcd")
            scheme = etcd_scheme(self.site)
            self._registry = Registry(
                f"{scheme}://{host}:{port}",
                self.site.services.etcd.prefix,
                tls=EtcdTls.of(self.state.tls_dir) if scheme == "https" else None,
            )
        return self._registry

    def jenkins_url(self) -> str | None:
        if not self.site.services.jenkins.enabled:
            return None
        host, port = self.endpoint("jenkins")
        return f"http://{host}:{port}/login"

    def close(self) -> None:
        for tunnel in self._tunnels.values():
            tunnel.close()

    def executor(self) -> Executor:
        secrets = _secrets(self.state)
        if image_registry.is_placed(self.site):
            secrets |= image_registry.container_secrets(self.site, self.state, self.inventory)
            image_registry.trust(self.site, self.state, self.inventory)
        return Executor(
            site=self.site.name,
            clients=self.clients,
            secrets=secrets,
            registry=self.registry,
            reporter=self.reporter,
            health_timeout=float(self.site.timeouts.health),
            galera_members=self.site.services.galera.members,
            jenkins_url=self.jenkins_url,
            tls_dir=self.state.tls_dir,
        )


def open_session(
    site: Site,
    state: StateDir,
    reporter: Reporter,
    build: bool,
    wait: float = 0,
    clients: dict[str, docker.DockerClient] | None = None,
) -> Session:
    inventory = _inventory(site, state)
    if clients is None:
        clients = _clients(site, inventory, wait)
    return Session(
        site,
        state,
        inventory,
        clients,
        reporter,
        _resolve_images(site, inventory, clients, reporter, build),
    )


def plan(
    site: Site,
    state: StateDir,
    site_path: str,
    reporter: Reporter,
    services_only: bool = False,
    infrastructure_only: bool = False,
) -> PlanResult:
    """Terraform's changes (openstack) and the containers' actions (once nodes exist)."""
    _check_scope(site, services_only=services_only, infrastructure_only=infrastructure_only)
    result = PlanResult()
    if site.target == "openstack" and not services_only:
        from cidemo_infra.targets.openstack import plan_infrastructure

        result.infrastructure = plan_infrastructure(site, state, site_path, reporter)
        if infrastructure_only or not state.inventory_file.exists():
            return result  # no nodes yet: every container is still to be created
    session = open_session(site, state, reporter, build=False)
    try:
        result.actions = session.actions()
    finally:
        session.close()
    return result


def _check_scope(site: Site, *, services_only: bool, infrastructure_only: bool) -> None:
    if services_only and infrastructure_only:
        raise UsageError("--services-only and --infrastructure-only exclude each other")
    if infrastructure_only and site.target != "openstack":
        raise UsageError(
            f"--infrastructure-only: site '{site.name}' has target {site.target}, which has no "
            "cloud infrastructure (only an openstack site has)"
        )


def provision(
    site: Site,
    state: StateDir,
    site_path: str,
    reporter: Reporter,
    *,
    dry_run: bool,
    yes: bool,
    lock_wait: float,
    infrastructure_only: bool = False,
) -> None:
    _check_scope(site, services_only=False, infrastructure_only=infrastructure_only)
    if site.target == "openstack":
        from cidemo_infra.targets.openstack import provision_infrastructure

        if not provision_infrastructure(site, state, site_path, reporter, dry_run=dry_run, yes=yes):
            return
        if infrastructure_only:
            _print_nodes(_inventory(site, state), reporter)
            return
    place_services(site, state, reporter, dry_run=dry_run, lock_wait=lock_wait, site_path=site_path)


def _refuse_strangers_volumes(session: Session) -> None:
    """A state directory with no root password yet meets Galera data volumes of its site: they
    were made by another state directory (another checkout, a lost `.cidemo/`), and their
    databases know another password. Refused before anything changes, rather than placed and
    then failing the smoke checks with "Access denied"."""
    site, state = session.site, session.state
    if state.known_secret("root_password", SECRETS["root_password"]) is not None:
        return
    flt = {"label": [f"{LABEL_SITE}={site.name}", "io.cidemo.role=galera"]}
    for engine, client in session.clients.items():
        found = sorted(v.name for v in client.volumes.list(filters=flt))
        if found:
            raise UsageError(
                f"site '{site.name}': engine {engine} has its Galera data volumes ({found[0]}"
                f"{f' +{len(found) - 1} more' if len(found) > 1 else ''}) but the state "
                f"directory {state.path} has no root password for them: give the --state-dir "
                f"that made them (or {SECRETS['root_password']}), or remove them with "
                "cidemo destroy --purge"
            )


def _print_nodes(inventory: Inventory, reporter: Reporter) -> None:
    reporter.table(
        ["node", "role", "private address", "public address", "docker"],
        [[n.name, n.role, n.private_ip, n.public_ip or "-", n.docker_url] for n in inventory.nodes],
    )
    reporter.line("infrastructure only: no service was placed (run provision without the option)")


def place_services(
    site: Site,
    state: StateDir,
    reporter: Reporter,
    *,
    dry_run: bool,
    lock_wait: float,
    site_path: str | None = None,
) -> None:
    """Place and check the service tier on the inventory's engines (after the infrastructure),
    and build the site's app image (`environments.build`) where the apps run."""
    wait = site.timeouts.docker if site.target == "openstack" else 0
    with state.lock(lock_wait):
        session = open_session(site, state, reporter, build=not dry_run, wait=wait)
        try:
            _refuse_strangers_volumes(session)
            actions = session.actions()
            app = _app_image(session, site_path, dry_run=dry_run)
            if dry_run:
                PlanResult(actions=actions).print(reporter)
                return
            ensure_site_tls(session)
            if not actions:
                reporter.line("no changes: the site is converged (0 actions)")
            else:
                executor = session.executor()
                bridge = _plain_etcd_bridge(session)
                executor.apply([a for a in actions if a.role in INFRA_ROLES])
                if bridge is not None:
                    reporter.step(
                        f"etcd now speaks TLS only: {bridge.name} serves plain HTTP on its old "
                        "address until every container is replaced"
                    )
                    executor.create(bridge)
                session.registry().wait_healthy(site.timeouts.etcd)
                bootstrap = _prepare_galera(session)
                executor.apply(_bootstrap_first(session.actions(), bootstrap))
            _remove_etcd_bridge(session)
            if site.engines_here:
                registry = [REGISTRY_PORT] if has_registry(site) else []
                firewall.install(site.name, site_cidrs(site).split(","), registry)
                reporter.step(
                    "firewall: the apps' network cannot reach etcd, Docker, Galera"
                    f"{' or the site registry' if registry else ''} "
                    f"(chains {firewall.chains(site.name).forward}, "
                    f"{firewall.chains(site.name).input})"
                )
                made = branch_store.ensure_local()  # the previews' databases branch there
                if made:
                    reporter.step(f"branch store: {made}")
            session.inventory.save(state.inventory_file)
            report = _smoke(session)
            report.print(reporter)
            _print_endpoints(session, app)
        finally:
            session.close()
    if not report.passed:
        failed = ", ".join(c.name for c in report.failed())
        raise PlacementError(f"provisioned, but smoke checks failed: {failed}")


def ensure_site_tls(session: Session) -> None:
    """The site CA and the certificates the services present: etcd's and each component's
    client certificate, a server certificate per node (MySQL, and etcd on cloud nodes).
    openstack: rendering made them already, with the nodes' every address."""
    site, inventory = session.site, session.inventory
    if site.target != "local":
        return
    nodes = {n.name: [n.private_ip, n.name] for n in inventory.nodes}
    standalone = inventory.of_role("standalone")[0]
    nodes[ETCD_SERVER_NAME] = [local_address(site, standalone.engine, ETCD_HOST_INDEX), "etcd"]
    ensure_pki(session.state.tls_dir, site.name, nodes, ETCD_COMPONENTS)


def _plain_etcd_bridge(session: Session) -> ContainerSpec | None:
    """local: the bridge an upgrade needs when the site's etcd container still serves plain
    HTTP (placed before cidemo had etcd TLS), else None."""
    site = session.site
    if site.target != "local":
        return None
    standalone = session.inventory.of_role("standalone")[0]
    try:
        info = session.clients[standalone.engine].api.inspect_container(
            container_name(site, "etcd")
        )
    except docker.errors.NotFound:
        return None
    if "ETCD_TLS=on" in (info["Config"].get("Env") or []):
        return None
    return etcd_bridge_spec(site, session.inventory, session.images["dbproxy"])


def _remove_etcd_bridge(session: Session) -> None:
    """Once every container speaks TLS to etcd, the upgrade's bridge goes (if there is one)."""
    if session.site.target != "local":
        return
    standalone = session.inventory.of_role("standalone")[0]
    name = container_name(session.site, "etcd-bridge")
    try:
        session.clients[standalone.engine].api.remove_container(name, force=True)
        session.reporter.step(f"removed {name}: every container speaks TLS to etcd")
    except docker.errors.NotFound:
        pass


def _app_image(session: Session, site_path: str | None, *, dry_run: bool) -> str | None:
    """The site's app image, built on the engine that runs the apps (locally the standalone
    node's, the one-node swarm) when it is missing."""
    site = session.site
    if site_path is None or not site.environments.build or not has_router(site):
        return None
    standalone = session.inventory.of_role("standalone")[0]
    return app_image.ensure_app_image(
        session.clients[standalone.engine],
        standalone.name,
        site,
        site_path,
        session.reporter,
        dry_run=dry_run,
    )


def _prepare_galera(session: Session) -> str | None:
    """If the cluster existed and no member is alive, pick the member to bootstrap from."""
    site = session.site
    registry = session.registry()
    if registry.get(guard_key(registry.prefix, site.services.galera.cluster_name)) is None:
        return None
    members = [s for s in session.specs if s.role == "galera"]
    if _any_member_synced(session, members):
        return None
    return _recover_guard(session, members, registry)


def _any_member_synced(session: Session, members: list[ContainerSpec]) -> bool:
    for spec in members:
        try:
            container = session.clients[spec.engine].containers.get(spec.name)
        except docker.errors.NotFound:
            continue
        if member_status(container).is_synced:
            return True
    return False


def _recover_guard(session: Session, members: list[ContainerSpec], registry: Registry) -> str:
    reporter = session.reporter
    for spec in members:  # a member waiting to join must not race the recovery
        try:
            session.clients[spec.engine].api.stop(spec.name, timeout=60)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise engine_error(spec.node, f"stop {spec.name}", exc) from None
    positions = []
    for spec in members:
        with reporter.progress(f"reading the committed position of {spec.name}"):
            positions.append(read_position(session.clients[spec.engine], spec))
    best = choose_bootstrap(positions)
    generation = move_guard(registry, session.site.services.galera.cluster_name, best, positions)
    reporter.step(
        f"galera: bootstrapping from {best.node} (seqno {best.seqno}; others: "
        + ", ".join(f"{p.node}={p.seqno}" for p in positions if p is not best)
        + f"), guard generation {generation}"
    )
    return best.node


def _bootstrap_first(actions: list[Action], node: str | None) -> list[Action]:
    if node is None:
        return actions
    first = [a for a in actions if a.role == "galera" and a.node == node]
    return (
        [a for a in actions if a.role in INFRA_ROLES]
        + first
        + [a for a in actions if a.role not in INFRA_ROLES and a not in first]
    )


def recover(
    site: Site, state: StateDir, reporter: Reporter, *, yes: bool, lock_wait: float
) -> None:
    with state.lock(lock_wait):
        session = open_session(site, state, reporter, build=False)  # nothing built until asked
        members = [s for s in session.specs if s.role == "galera"]
        if _any_member_synced(session, members):
            raise PlacementError(
                "a Galera member is still Synced; recover is for a crash of all "
                "members (use cidemo provision to heal single members)"
            )
        if not yes and not click.confirm(
            f"Stop every member of '{site.name}' and bootstrap from the most advanced one?",
            default=False,
        ):
            raise click.exceptions.Abort
        try:
            session.images = _resolve_images(
                site, session.inventory, session.clients, reporter, build=True
            )
            registry = session.registry()
            registry.wait_healthy(site.timeouts.etcd)
            best = _recover_guard(session, members, registry)
            session.executor().apply(_bootstrap_first(session.actions(), best))
            report = _smoke(session)
        finally:
            session.close()
    report.print(reporter)
    if not report.passed:
        raise PlacementError(
            "recovered, but smoke checks failed: " + ", ".join(c.name for c in report.failed())
        )


def _smoke(session: Session, unreachable: Mapping[str, str] | None = None) -> Report:
    return run_smoke(
        SmokeContext(
            registry=session.registry(),
            clients=session.clients,
            specs=session.specs,
            rw_endpoint=session.endpoint("rw"),
            # a check reads: it never generates a secret (a wrong --state-dir fails the check)
            root_password=session.state.known_secret("root_password", SECRETS["root_password"])
            or "",
            tls_ca=session.state.tls_dir / "ca.pem",
            jenkins_url=session.jenkins_url(),
            ttl=session.site.services.galera.ttl,
            unreachable=dict(unreachable or {}),
        )
    )


def smoke(site: Site, state: StateDir, reporter: Reporter) -> Report:
    """The checks; on a cloud, a node whose engine does not answer is a failed check of its own
    and the rest of the site is checked without it."""
    if site.target == "local":
        session = open_session(site, state, reporter, build=False)
        unreachable: dict[str, str] = {}
    else:
        clients, unreachable = _answering_clients(site, state, reporter, quiet=True)
        session = open_session(site, state, reporter, build=False, clients=clients)
    try:
        return _smoke(session, unreachable)
    finally:
        session.close()


def _print_endpoints(session: Session, app: str | None = None) -> None:
    """local: where to connect from here; openstack: the node-private addresses (reached from
    the cluster, or by the tool through the gateway container). With environments: the apps'
    router (an app answers there for `Host: <env>.<domain>`) and the app image built here."""
    site = session.site
    if site.target == "local":
        where = {name: session.endpoint(name) for name in SERVICE_PORTS}
    else:
        standalone = session.inventory.of_role("standalone")[0].private_ip
        where = {name: (standalone, port) for name, port in SERVICE_PORTS.items()}
    rows = [
        ["proxy read-write", "mysql://{}:{}".format(*where["rw"])],
        ["proxy read-only", "mysql://{}:{}".format(*where["ro"])],
        ["etcd", "https://{}:{} (client certificate: tls/client-cert.pem)".format(*where["etcd"])],
    ]
    if site.services.jenkins.enabled:
        rows.append(["jenkins", "http://{}:{}".format(*where["jenkins"])])
    if has_router(site):
        if site.target == "local":
            router = f"http://127.0.0.1:{site.environments.router_port}"
        else:
            router = f"http://{session.inventory.of_role('standalone')[0].public_ip or '-'}:80"
        rows.append(["apps router", f"{router} (Host: <env>.{apps_domain(site)})"])
    if app:
        rows.append(["app image", f"{app} (cidemo env up without --ref runs it)"])
    rows.append(["secrets", str(session.state.secrets_dir)])
    session.reporter.table(["endpoint", "address"], rows)


def status(site: Site, state: StateDir) -> list[dict[str, str]]:
    inventory = _inventory(site, state)
    clients = _clients(site, inventory)
    observed, _ = observe(site.name, clients, {n.name: n.engine for n in inventory.nodes})
    rows = []
    for obs in observed:
        image = clients[obs.engine].api.inspect_container(obs.name)["Config"]["Image"]
        rows.append(
            {
                "node": obs.node,
                "role": obs.role,
                "container": obs.name,
                "state": obs.status if obs.status != "exited" else f"exited ({obs.exit_code})",
                "image": image,
                "engine": obs.engine,
            }
        )
    return rows


def destroy(
    site: Site,
    state: StateDir,
    site_path: str,
    reporter: Reporter,
    *,
    dry_run: bool,
    yes: bool,
    lock_wait: float,
    purge: bool,
    sweep: bool = False,
) -> None:
    """Services first (where the engines answer), then the infrastructure, then the leak sweep."""
    openstack = site.target == "openstack"
    if sweep and not openstack:
        raise UsageError(
            f"--sweep: site '{site.name}' has target {site.target}; only an openstack site has "
            "cloud resources to sweep"
        )
    with state.lock(lock_wait):
        clients, _ = _answering_clients(site, state, reporter)
        doomed = _labelled(site.name, clients, purge or openstack)
        for kind, items in doomed.items():
            for engine, name in items:
                reporter.line(f"remove {kind} {name} (engine {engine})")
        infrastructure = None
        if openstack:
            from cidemo_infra.targets import openstack as target

            infrastructure = target.plan_destroy(site, state, site_path, reporter)
        if not any(doomed.values()) and not (infrastructure and infrastructure.has_changes):
            reporter.line(f"no changes: nothing of site '{site.name}' is left")
        elif not dry_run:
            what = " including its data volumes" if purge or openstack else ""
            if not yes and not click.confirm(
                f"Remove everything of site '{site.name}'{what}?", default=False
            ):
                raise click.exceptions.Abort
            for engine, client in unique_clients(clients).items():
                try:
                    for removed in remove_site_apps(client, site.name):
                        reporter.line(f"removed {removed}")
                except EngineError as exc:
                    if not openstack:
                        raise
                    # the node goes with its server: what its swarm still holds goes too
                    reporter.step(f"engine {engine}: {exc}; left to terraform destroy")
            _remove_labelled(clients, doomed)
            if site.engines_here:
                firewall.remove(site.name)
            if site.target == "local":
                image_registry.untrust(site, state, local_inventory(site))
            if infrastructure is not None and infrastructure.has_changes:
                target.destroy_infrastructure(site, state, reporter, infrastructure)
            state.inventory_file.unlink(missing_ok=True)
            reporter.line(
                f"destroyed site '{site.name}'"
                + ("" if purge or openstack else "; data volumes kept (use --purge)")
            )
        if openstack and not dry_run:
            leaks = target.sweep_leaks(site, reporter, delete=sweep)
            if leaks and not sweep:
                raise CloudError(
                    f"{len(leaks)} resource(s) of site '{site.name}' remain after terraform "
                    "destroy (listed above); run destroy --sweep to delete them"
                )


def _answering_clients(
    site: Site, state: StateDir, reporter: Reporter, quiet: bool = False
) -> tuple[dict[str, docker.DockerClient], dict[str, str]]:
    """Engines that answer, and why each other node's does not: all of them locally; on a
    cloud, those that answer (a half-created site, or a lost node, may have nodes that do not)."""
    if site.target == "local":
        return _clients(site, local_inventory(site)), {}
    inventory = Inventory.load(state.inventory_file)
    clients: dict[str, docker.DockerClient] = {}
    unreachable: dict[str, str] = {}
    for node in inventory.nodes if inventory else ():
        try:
            clients[node.engine] = client_for(
                node.docker_url,
                node.tls_dir,
                site.docker.allow_plain_tcp,
                node=node.name,
                timeout=10,
            )
        except EngineError as exc:
            unreachable[node.engine] = str(exc)
            if not quiet:
                reporter.step(f"skipping services on {node.name}: {exc}")
    return clients, unreachable


def _labelled(
    site: str, clients: dict[str, docker.DockerClient], purge: bool
) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {"container": [], "network": [], "volume": []}
    flt = {"label": f"{LABEL_SITE}={site}"}
    for engine, client in unique_clients(clients).items():
        found["container"] += [
            (engine, c["Names"][0].lstrip("/"))
            for c in client.api.containers(all=True, filters=flt)
        ]
        found["network"] += [(engine, n["Name"]) for n in client.api.networks(filters=flt)]
        if purge:
            volumes = client.api.volumes(filters=flt).get("Volumes") or []
            found["volume"] += [(engine, v["Name"]) for v in volumes]
    return found


def _remove_labelled(
    clients: dict[str, docker.DockerClient], doomed: dict[str, list[tuple[str, str]]]
) -> None:
    for engine, name in doomed["container"]:
        try:
            clients[engine].api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise engine_error(engine, f"remove container {name}", exc) from None
    for kind in ("network", "volume"):
        for engine, name in doomed[kind]:
            try:
                if kind == "network":
                    clients[engine].api.remove_network(name)
                else:
                    clients[engine].api.remove_volume(name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                raise engine_error(engine, f"remove {kind} {name}", exc) from None


def build_images(site: Site, reporter: Reporter, base_only: bool) -> list[str]:
    """Build the site's project images: on its engines (local), or on this machine's engine."""
    if site.target == "local":
        inventory = local_inventory(site)
        clients = _clients(site, inventory)
    else:
        clients = {"local": client_for("unix:///var/run/docker.sock", node="this machine")}
    if base_only:
        return [project_images.base_image(next(iter(clients.values())), reporter)]
    if site.target != "local":
        names = {
            ref.removeprefix(project_images.PROJECT_PREFIX)
            for ref in image_refs(site).values()
            if project_images.is_project_image(ref)
        }
        tags = project_images.ensure_images(clients, {"local": names}, reporter)
        return [f"{name}: {tag}" for name, tag in sorted(tags.items())]
    resolved = _resolve_images(site, inventory, clients, reporter, build=True)
    return [f"{role}: {ref}" for role, ref in sorted(resolved.items())]
