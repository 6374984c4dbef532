"""What a verified delivery may do beyond what its payload says, decided before it is queued.

- A fork's pull request deploys on the label only when the label's sender has write access to
  the repository: listed in `environments.authorized_logins`, or so says GitHub's collaborator
  permission API (`Collaborators`). No token is no; GitHub not answering raises `AccessUnknown`
  (the server answers 503 and forgets the delivery, so that GitHub's redelivery can succeed).
- The replay rule for pushes that deploy (staging and production branches): each admitted
  push's `after` is recorded per branch. A push whose `after` an earlier push to that branch
  already delivered, and which is not the branch's latest, is a replayed capture or a rollback by
  force-push: refused, unless the payload says `forced: true` and its sender has write access.
  Pushes are recorded when admitted, not when deployed, so a failed or superseded deploy never
  blocks later pushes (and the branch's latest commit can always be delivered again).

Refusals become `Refused` intents and a row of the `refusals` table, next to the delivery log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from cidemo_infra.webhook.events import (
    DeliverySettings,
    Intent,
    PreviewUp,
    Refused,
    branch_of,
    is_forced,
    repository_of,
    sender_of,
)

PUSH_LOG_SIZE = 10_000

log = logging.getLogger("cidemo.webhook")


class AccessUnknown(Exception):
    """GitHub did not say whether the sender may write: neither admitted nor refused."""


class WriteAccess(Protocol):
    """GitHub's answer to "may `login` write to `repo`": True, False, or None (unknown)."""

    def has_write_access(self, repo: str, login: str) -> bool | None: ...


class PushLog:
    """Per branch, the commits pushes delivered (newest `max_entries` kept), and the refusals."""

    def __init__(self, path: Path, max_entries: int = PUSH_LOG_SIZE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pushes (branch TEXT NOT NULL, sha TEXT NOT NULL, "
            "seq INTEGER NOT NULL, PRIMARY KEY (branch, sha))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS refusals (delivery TEXT NOT NULL, at REAL NOT NULL, "
            "reason TEXT NOT NULL)"
        )
        path.chmod(0o600)

    def admit(self, branch: str, sha: str, forced_ok: bool = False) -> bool:
        """Record `sha` as `branch`'s latest and say True, unless it is a replay (False)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sha FROM pushes WHERE branch = ? ORDER BY seq DESC LIMIT 1", (branch,)
            ).fetchall()
            latest = rows[0][0] if rows else None
            seen = self._db.execute(
                "SELECT 1 FROM pushes WHERE branch = ? AND sha = ?", (branch, sha)
            ).fetchone()
            if seen is not None and sha != latest and not forced_ok:
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO pushes (branch, sha, seq) VALUES "
                "(?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM pushes))",
                (branch, sha),
            )
            self._db.execute(
                "DELETE FROM pushes WHERE seq NOT IN "
                "(SELECT seq FROM pushes ORDER BY seq DESC LIMIT ?)",
                (self.max_entries,),
            )
            return True

    def latest(self, branch: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sha FROM pushes WHERE branch = ? ORDER BY seq DESC LIMIT 1", (branch,)
            ).fetchone()
            return str(row[0]) if row else None

    def refuse(self, delivery: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO refusals (delivery, at, reason) VALUES (?, ?, ?)",
                (delivery, time.time(), reason),
            )
            self._db.execute(
                "DELETE FROM refusals WHERE rowid NOT IN "
                "(SELECT rowid FROM refusals ORDER BY rowid DESC LIMIT ?)",
                (self.max_entries,),
            )

    def refusals(self) -> list[tuple[str, str]]:
        """(delivery, reason) of the recorded refusals, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT delivery, reason FROM refusals ORDER BY rowid")
            return [(str(d), str(r)) for d, r in rows.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Admission:
    """Turns the intents a delivery maps to into the ones it may have; the rest are `Refused`."""

    def __init__(
        self, settings: DeliverySettings, pushes: PushLog, access: WriteAccess | None
    ) -> None:
        self.settings = settings
        self.pushes = pushes
        self.access = access

    def admit(
        self, delivery: str, payload: Mapping[str, Any], intents: list[Intent]
    ) -> list[Intent]:
        admitted = [self._admit(payload, intent) for intent in intents]
        for intent in admitted:
            if isinstance(intent, Refused):
                self.pushes.refuse(delivery, intent.reason)
        return admitted

    def _admit(self, payload: Mapping[str, Any], intent: Intent) -> Intent:
        if isinstance(intent, PreviewUp) and intent.is_fork:
            login = sender_of(payload)
            allowed, why = self.may_write(repository_of(payload), login)
            if allowed:
                return intent
            return Refused(
                f"pull request #{intent.pr}: label '{self.settings.fork_label}' added by "
                f"'{login}', {why}; someone with write access must add it"
            )
        branch = branch_of(intent, self.settings)
        sha = getattr(intent, "sha", None)
        if branch is None or sha is None:
            return intent
        if self.pushes.admit(branch, sha):
            return intent
        login = sender_of(payload)
        refused = (
            f"push of {sha[:12]} to {branch}: an earlier push to {branch} delivered it and it "
            f"is not {branch}'s latest (a replay or a rollback)"
        )
        if not is_forced(payload):
            return Refused(f"{refused}; a deliberate rollback is a forced push by a writer")
        allowed, why = self.may_write(repository_of(payload), login)
        if allowed and self.pushes.admit(branch, sha, forced_ok=True):
            return intent
        return Refused(f"{refused}; it is forced, but by '{login}', {why}")

    def may_write(self, repo: str, login: str) -> tuple[bool, str]:
        """(True, "") when `login` may write to `repo`, else (False, why not); AccessUnknown
        when GitHub was asked and did not answer."""
        if login in self.settings.authorized_logins:
            return True, ""
        if self.access is None:
            return False, (
                "who is not in environments.authorized_logins (and without CIDEMO_GITHUB_TOKEN "
                "GitHub is not asked)"
            )
        answer = self.access.has_write_access(repo, login)
        if answer is None:
            raise AccessUnknown(f"GitHub did not say whether '{login}' may write to {repo}")
        if not answer:
            return False, f"who has no write access to {repo}"
        return True, ""
