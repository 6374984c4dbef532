"""File locks in the state directory: one per environment, and short ones for shared steps.

Like `StateDir.lock`: `flock` on a file under `<state>/locks/`, released when the block ends or the
process dies. Two holders in one process (the webhook's worker threads) exclude each other too,
since every acquisition opens its own file description.
"""

from __future__ import annotations

import contextlib

from cidemo_infra.envs.names import validate_name
from cidemo_infra.state import StateDir, hold_lock

POLL = 0.2
# Shared steps (counting previews, preparing the swarm) hold their lock for seconds at most.
SHORT_WAIT = 300.0
LONG_WAIT = 3600.0  # a snapshot of a big staging database


def file_lock(
    state: StateDir, name: str, wait: float, what: str, shared: bool = False
) -> contextlib.AbstractContextManager[None]:
    state.ensure()
    folder = state.path / "locks"
    folder.mkdir(mode=0o700, exist_ok=True)
    return hold_lock(folder / f"{name}.lock", wait, f"{what} of site '{state.site}'", POLL, shared)


def env_lock(
    state: StateDir, env: str, wait: float = 0.0
) -> contextlib.AbstractContextManager[None]:
    """Held for a whole action on one environment (up, down, promote, refresh)."""
    return file_lock(state, f"env-{validate_name(env)}", wait, f"environment '{env}'")


def previews_lock(state: StateDir) -> contextlib.AbstractContextManager[None]:
    """Held while previews are counted and a new one is reserved (max_previews)."""
    return file_lock(state, "previews", SHORT_WAIT, "the preview count")


def platform_lock(state: StateDir) -> contextlib.AbstractContextManager[None]:
    """Held while the app platform's shared parts (swarm, network, attachments) are prepared."""
    return file_lock(state, "platform", SHORT_WAIT, "the app platform")


def snapshot_lock(
    state: StateDir, kind: str, wait: float = LONG_WAIT
) -> contextlib.AbstractContextManager[None]:
    """Held while a snapshot of one kind is taken; previews never wait for it unless no
    snapshot of their kind exists yet."""
    return file_lock(state, f"snapshot-{validate_name(kind)}", wait, f"the {kind} snapshot")


def registry_push_lock(state: StateDir) -> contextlib.AbstractContextManager[None]:
    """Held (shared) while an image is pushed to the site registry: its garbage collection
    would take the blobs of a push not yet tagged."""
    return file_lock(state, "registry", SHORT_WAIT, "the site registry", shared=True)


def registry_collect_lock(state: StateDir) -> contextlib.AbstractContextManager[None]:
    """Held (exclusive, never waited for) while the site registry collects its garbage."""
    return file_lock(state, "registry", 0.0, "the site registry")
