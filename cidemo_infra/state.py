"""The per-site state directory: Terraform working dir, rendered files, secrets, TLS, inventory.

It is `.cidemo/<site>/` unless `--state-dir` or `CIDEMO_STATE_DIR` names another directory, which is
then used as is. A marker file binds a directory to one site so two sites never share state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cidemo_infra.errors import LockError, UsageError

DEFAULT_ROOT = Path(".cidemo")
MARKER = "site"


def write_private(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write atomically with `mode` from the first byte (no window where the file is readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class StateDir:
    path: Path
    site: str

    @classmethod
    def resolve(cls, site: str, override: str | None = None) -> StateDir:
        chosen = override or os.environ.get("CIDEMO_STATE_DIR")
        path = Path(chosen) if chosen else DEFAULT_ROOT / site
        return cls(path.absolute(), site)

    def check(self) -> StateDir:
        """Refuse another site's directory; writes nothing (every command checks this first)."""
        marker = self.path / MARKER
        if marker.exists():
            owner = marker.read_text().strip()
            if owner != self.site:
                raise UsageError(
                    f"state directory {self.path} belongs to site '{owner}', not "
                    f"'{self.site}'; give each site its own --state-dir"
                )
        return self

    def ensure(self) -> StateDir:
        """Create the directory (0700) and bind it to this site; refuse another site's directory."""
        marker = self.path / MARKER
        if marker.exists():
            self.check()
        else:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(marker, self.site + "\n", 0o644)
        return self

    @property
    def terraform_dir(self) -> Path:
        return self.path / "terraform"

    @property
    def user_data_dir(self) -> Path:
        return self.path / "user-data"

    @property
    def tls_dir(self) -> Path:
        return self.path / "tls"

    @property
    def secrets_dir(self) -> Path:
        return self.path / "secrets"

    @property
    def inventory_file(self) -> Path:
        return self.path / "inventory.json"

    def known_secret(self, name: str, env: str | None = None) -> str | None:
        """A secret from the environment or secrets/, or None; never generates one."""
        if env and os.environ.get(env):
            return os.environ[env]
        path = self.secrets_dir / name
        return path.read_text().strip() if path.is_file() else None

    def secret(self, name: str, env: str | None = None, nbytes: int = 24) -> str:
        """A secret from the environment if set, else generated once into secrets/ (0600)."""
        if env and os.environ.get(env):
            return os.environ[env]
        path = self.secrets_dir / name
        if path.exists():
            return path.read_text().strip()
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_urlsafe(nbytes)
        write_private(path, value + "\n")
        return value

    def lock(self, wait: float = 0.0) -> contextlib.AbstractContextManager[None]:
        """Hold the site's lock; a second mutating run waits up to `wait` seconds, then fails."""
        self.ensure()
        return hold_lock(self.path / ".lock", wait, f"site '{self.site}'")


@contextlib.contextmanager
def hold_lock(
    path: Path, wait: float, what: str, poll: float = 0.2, shared: bool = False
) -> Iterator[None]:
    """`flock` on `path` for the block; released when it ends or the process dies. Every call
    opens its own file description, so two holders in one process exclude each other too.
    `shared` holders exclude only an exclusive one."""
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole block
    deadline = time.monotonic() + wait
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        while True:
            try:
                fcntl.flock(fh, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"{what} is locked by another cidemo run ({path}); wait for it or use "
                        "--lock-wait"
                    ) from None
                time.sleep(poll)
        yield
    finally:
        fh.close()
