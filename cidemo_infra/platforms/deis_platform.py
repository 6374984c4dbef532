"""The `deis` platform: one Deis v1 app per environment, on the site's controller.

`deploy` is what the 2015 Jenkins jobs did by hand: `deis apps:create`, `deis config:set`, then
`deis pull <image>` (a build from a registry image). Deis v1 keeps config in plain environment
variables, so secrets are set as config values too (it has no secret store); they are sent, never
logged. The client's API has no build listing, so the image of an environment is the one this
tool last deployed (its record in the state directory). The token comes from `CIDEMO_DEIS_TOKEN`
or the state directory (`secrets/deis_token`, from `deis login`); it is never generated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cidemo_infra.databases.branches import Placement
from cidemo_infra.envs import records
from cidemo_infra.envs.names import Environment
from cidemo_infra.errors import UsageError
from cidemo_infra.inventory import InventoryNode
from cidemo_infra.lifecycle import Session
from cidemo_infra.placement.specs import PROXY_RW_PORT, apps_domain
from cidemo_infra.platforms.deis import DeisClient, DeisError
from cidemo_infra.platforms.platform import Deployment
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir

TOKEN_ENV = "CIDEMO_DEIS_TOKEN"
TOKEN_FILE = "deis_token"


def deis_token(state: StateDir) -> str:
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = state.secrets_dir / TOKEN_FILE
    if not path.is_file() or not path.read_text().strip():
        raise UsageError(
            f"no Deis token: set {TOKEN_ENV} or write the token of `deis login` into {path} "
            "(mode 0600)"
        )
    return path.read_text().strip()


class DeisPlatform:
    name = "deis"

    def __init__(
        self,
        site: Site,
        state: StateDir,
        client: DeisClient,
        database: tuple[str, int],
        deis_nodes: tuple[InventoryNode, ...] = (),
    ) -> None:
        self.site = site
        self.state = state
        self.client = client
        self._database = database
        self._deis_nodes = deis_nodes

    @classmethod
    def for_session(cls, session: Session) -> DeisPlatform:
        site = session.site
        controller = site.environments.deis_controller
        if not controller:
            raise UsageError("environments.deis_controller: required for platform 'deis'")
        standalone = session.inventory.of_role("standalone")[0]
        return cls(
            site,
            session.state,
            DeisClient(controller, deis_token(session.state)),
            (str(standalone.private_ip), PROXY_RW_PORT),
            tuple(session.inventory.of_role("deis")),
        )

    def url_of(self, env: Environment) -> str:
        return f"http://{env.name}.{apps_domain(self.site)}"

    def database_address(self) -> tuple[str, int]:
        return self._database

    def branch_placements(self) -> list[Placement]:
        """The deis nodes, where the apps run: a preview's database publishes 3306 on a free
        port of its node's private address, which the apps reach (Deis v1 has no networks)."""
        return [Placement(n.engine, n.name, None, str(n.private_ip)) for n in self._deis_nodes]

    def deploy(
        self,
        env: Environment,
        image: str,
        environment: dict[str, str],
        secrets: Mapping[str, str] | None = None,
    ) -> str:
        app, _ = self.client.ensure_app(env.name)
        self.client.set_config(env.name, {**environment, **(secrets or {})})
        self.client.deploy_image(env.name, image)
        return f"http://{app.url}" if app.url else self.url_of(env)

    def check_deploy(self, image: str) -> None:
        """The controller pulls the image itself; the token and URL are checked when the
        platform is made."""

    def prepare(self) -> None:
        """Nothing: the controller owns the routing and the apps' network."""

    def remove(self, env: Environment) -> bool:
        if self.client.get_app(env.name) is None:
            return False
        try:
            self.client.destroy_app(env.name, confirm=env.name)
        except DeisError as exc:
            if exc.status != 404:
                raise
            return False
        return True

    def image_of(self, env: Environment) -> str | None:
        record = records.load(self.state, env.name)
        if record is None or not record.image or self.client.get_app(env.name) is None:
            return None
        return record.image

    def list(self) -> list[Deployment]:
        return [
            Deployment(r.name, r.image, r.url, r.updated)
            for r in records.load_all(self.state)
            if r.image
        ]
