"""File locks in the state directory: one per environment, and short ones for shared steps.

Like `StateDir.lock`: `flock` on a file under `<state>/locks/`, released when the block ends or the
process dies. Two holders in one process (the webhook's worker threads) exclude each other too,
since every acquisition opens its own file description.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator

from cidemo_infra.envs.names import validate_name
from cidemo_infra.errors import LockError
from cidemo_infra.state import StateDir

POLL = 0.2
# Shared steps (counting previews, preparing the swarm) hold their lock for seconds at most.
SHORT_WAIT = 300.0


@contextlib.contextmanager
def file_lock(state: StateDir, name: str, wait: float, what: str) -> Iterator[None]:
    state.ensure()
    folder = state.path / "locks"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{name}.lock"
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole block
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"{what} of site '{state.site}' is locked by another cidemo run "
                        f"({path}); wait for it or use --lock-wait"
                    ) from None
                time.sleep(POLL)
        yield
    finally:
        fh.close()


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
