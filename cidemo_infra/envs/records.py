"""What the tool remembers about environments, in the state directory (no secrets).

`<state>/envs/<name>.json`: kind, pull request, the image and commit last deployed, URL,
database, a preview's snapshot (the image its database branched from), when it was created
and last updated (UTC, ISO 8601). A preview's record is written
before it is deployed, under the previews lock, so it is also its reservation against
`max_previews`. `<state>/envs/closed/pr-<n>.json` marks a pull request as closed (written by
`env down` and the webhook before removal, so `env gc` can finish a removal that failed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cidemo_infra.envs.names import KINDS, Environment, validate_name
from cidemo_infra.errors import UsageError
from cidemo_infra.state import StateDir, write_private


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def parse_time(text: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class EnvRecord:
    name: str
    kind: str
    pr: int | None
    database: str
    created: str
    updated: str
    image: str = ""
    ref: str = ""
    url: str = ""
    is_fork: bool = False
    repo: str = ""
    snapshot: str = ""  # previews: the snapshot image their database branched from

    @property
    def environment(self) -> Environment:
        for kind in KINDS:
            if kind == self.kind:
                return Environment(self.name, kind, self.pr)
        raise UsageError(f"environment record {self.name}: unknown kind '{self.kind}'")

    def touched(self, **changes: Any) -> EnvRecord:
        return replace(self, updated=now_utc(), **changes)


def _folder(state: StateDir) -> Path:
    return state.path / "envs"


def _path(state: StateDir, name: str) -> Path:
    return _folder(state) / f"{validate_name(name)}.json"


def load(state: StateDir, name: str) -> EnvRecord | None:
    path = _path(state, name)
    try:
        data = json.loads(path.read_text())
        fields = set(EnvRecord.__dataclass_fields__)
        return EnvRecord(**{k: v for k, v in data.items() if k in fields})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"{path}: not an environment record ({type(exc).__name__}); remove it and run "
            "cidemo env up again"
        ) from None


def load_all(state: StateDir) -> list[EnvRecord]:
    folder = _folder(state)
    if not folder.is_dir():
        return []
    found = [load(state, p.stem) for p in sorted(folder.glob("*.json"))]
    return [r for r in found if r is not None]


def save(state: StateDir, record: EnvRecord) -> None:
    write_private(_path(state, record.name), json.dumps(asdict(record), indent=2) + "\n", 0o644)


def delete(state: StateDir, name: str) -> None:
    _path(state, name).unlink(missing_ok=True)


def _closed_path(state: StateDir, pr: int) -> Path:
    return _folder(state) / "closed" / f"pr-{int(pr)}.json"


def mark_closed(state: StateDir, pr: int, merged: bool | None = None) -> None:
    data = {"pr": int(pr), "closed": now_utc(), "merged": merged}
    write_private(_closed_path(state, pr), json.dumps(data) + "\n", 0o644)


def is_marked_closed(state: StateDir, pr: int) -> bool:
    return _closed_path(state, pr).exists()


def clear_closed(state: StateDir, pr: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        _closed_path(state, pr).unlink()
