"""App platforms that run an environment's app, chosen by name (`environments.platform`):
`swarm` (Docker Swarm services, the default) or `deis` (Deis v1 apps). Each is imported only when
chosen; all of them implement `platform.AppPlatform`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cidemo_infra.errors import UsageError

if TYPE_CHECKING:
    from cidemo_infra.lifecycle import Session
    from cidemo_infra.platforms.platform import AppPlatform


PlatformFactory = Callable[["Session"], "AppPlatform"]


def _swarm(session: Session) -> AppPlatform:
    from cidemo_infra.platforms.swarm import SwarmPlatform

    return SwarmPlatform.for_session(session)


def _deis(session: Session) -> AppPlatform:
    from cidemo_infra.platforms.deis_platform import DeisPlatform

    return DeisPlatform.for_session(session)


PLATFORMS: dict[str, PlatformFactory] = {"swarm": _swarm, "deis": _deis}


def platform_for(name: str, session: Session) -> AppPlatform:
    factory = PLATFORMS.get(name)
    if factory is None:
        raise UsageError(
            f"environments.platform: '{name}' is not a platform; valid: {', '.join(PLATFORMS)}"
        )
    return factory(session)
