"""The interface of an app platform (chosen by name in `cidemo_infra.platforms`):

- `swarm` (default): a Docker Swarm service per environment behind the site's HTTP router;
- `deis`: a Deis v1 app per environment on the site's Deis controller.

A platform deploys an image with plain settings and secrets, removes an environment, says which
image an environment runs and lists what it runs. `check_deploy` says, without changing anything,
why a deploy of an image could not work (so nothing else is written first). It does not touch
databases: `operations` prepares each environment's database and hands the platform its
credentials; the platform only says where a preview's database may run (`branch_placements`).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cidemo_infra.databases.branches import Placement
from cidemo_infra.envs.names import Environment


@dataclass(frozen=True)
class Deployment:
    """One environment as the platform runs it."""

    env: str
    image: str
    url: str
    updated: str  # UTC, ISO 8601; "" when the platform does not say


class AppPlatform(Protocol):
    name: str

    def deploy(
        self,
        env: Environment,
        image: str,
        environment: dict[str, str],
        secrets: Mapping[str, str] | None = None,
    ) -> str:
        """Create or update `env` to run `image` with `environment` (plain settings) and
        `secrets` (name -> value; the app reads `<NAME>_FILE` where the platform stores them in
        files); returns its URL once it runs. Idempotent."""
        ...

    def check_deploy(self, image: str) -> None:
        """UsageError when `deploy` of `image` cannot work (the platform is not set up, the
        image cannot be found); reads only."""
        ...

    def prepare(self) -> None:
        """What every deploy needs and no app owns (networks, attachments); idempotent. `deploy`
        does it itself; `env up` calls it early, beside the database work."""
        ...

    def remove(self, env: Environment) -> bool:
        """Remove `env` (app, route, its secrets); False when there was nothing to remove."""
        ...

    def image_of(self, env: Environment) -> str | None:
        """The exact image reference `env` runs, or None when it does not exist."""
        ...

    def list(self) -> list[Deployment]: ...

    def url_of(self, env: Environment) -> str:
        """Where users reach `env` (also given to the app as `URL`)."""
        ...

    def database_address(self) -> tuple[str, int]:
        """Where the apps reach the site's MySQL proxy (read-write), as seen from the apps."""
        ...

    def branch_placements(self) -> builtins.list[Placement]:
        """Where a preview's database may run (one per node, the platform's choice of nodes),
        with how the apps reach it there; prepares what that needs (a network)."""
        ...
