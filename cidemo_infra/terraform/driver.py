"""A thin driver on python-terraform 0.10.1 that works with Terraform >= 0.15 and OpenTofu.

python-terraform is abandoned and breaks on modern Terraform; each breakage is handled here:
- `destroy()` adds `-force` (removed in 0.15): we never call it and strip the flag from any command;
- `apply()` ties `-auto-approve` to `skip_plan`: we apply only saved plans, which need no approval;
- the working directory goes positionally (removed in 0.15): we insert the global `-chdir=DIR`;
- errors are not raised by default: every command is checked and raises `TerraformError`;
- `var` dicts are written to temp files (secrets on disk): we only ever pass our own `-var-file`;
- its `cmd()` buffers all output until the end and has no timeout: python-terraform builds the
  command line, and the driver runs it, streaming plan/apply/destroy as `-json` events (progress
  for the operator, diagnostics for the error) and interrupting it at the site's deadline.
Terraform's output is parsed from JSON (`-json` events, `show -json`, `output -json`), never from
its text.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from python_terraform import IsFlagged, Terraform

from cidemo_infra.errors import TerraformError, TerraformTimeout, UsageError, diagnostic_line

SUPPORTED_BINARIES = ("terraform", "tofu")
PLAN_FILE = "cidemo.tfplan"
APPLY_RECORD = "cidemo-apply-started"  # when the last apply started (UTC, ISO 8601)
DEFAULT_TIMEOUT = 3600.0
INTERRUPT_GRACE = 60.0  # after SIGINT, the time terraform gets to write its state and stop
_REMOVED_FLAGS = frozenset({"-force"})
# No update check against the vendor, no questions: the same for terraform and tofu.
ENVIRONMENT = {"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}

# Every flag the driver passes, per command, in one place.
_FLAGS: dict[str, dict[str, Any]] = {
    "init": {"input": False, "no_color": IsFlagged},
    "validate": {"no_color": IsFlagged, "json": IsFlagged},
    "plan": {"input": False, "no_color": IsFlagged, "detailed_exitcode": IsFlagged},
    "show": {"no_color": IsFlagged, "json": IsFlagged},
    "apply": {"input": False, "no_color": IsFlagged},
    "output": {"no_color": IsFlagged, "json": IsFlagged},
    "destroy": {"input": False, "no_color": IsFlagged, "auto_approve": IsFlagged},
}
# Commands whose output is a stream of `-json` UI events, and the events shown while they run.
_STREAMED = frozenset({"plan", "apply", "destroy"})
_SHOWN_EVENTS = frozenset(
    {"apply_start", "apply_progress", "apply_complete", "apply_errored", "change_summary"}
)
_HINTS = {
    "apply": "what it created is in its state or is found as an orphan by the next provision: "
    "run provision again to converge, or destroy",
    "destroy": "run destroy again to remove what is left",
}


def terraform_binary(name: str | None = None) -> str:
    """The binary from `TF_BINARY` (terraform or tofu, by name or path), checked to exist."""
    chosen = name or os.environ.get("TF_BINARY") or "terraform"
    if Path(chosen).name not in SUPPORTED_BINARIES:
        raise UsageError(
            f"TF_BINARY={chosen!r} is not supported; use one of: "
            f"{', '.join(SUPPORTED_BINARIES)} (a name on PATH or a path to it)"
        )
    found = shutil.which(chosen)
    if found is None:
        raise UsageError(f"TF_BINARY={chosen!r}: not found on PATH; install it or set TF_BINARY")
    return found


class _Terraform(Terraform):
    """python-terraform with `-chdir` and without flags that modern Terraform removed."""

    def __init__(self, workdir: Path, binary: str) -> None:
        super().__init__(working_dir=str(workdir), terraform_bin_path=binary)
        self.workdir = workdir

    def generate_cmd_string(self, cmd: str, *args: Any, **kwargs: Any) -> list[str]:
        cmds: list[str] = super().generate_cmd_string(cmd, *args, **kwargs)
        cmds = [c for c in cmds if c not in _REMOVED_FLAGS]
        return [cmds[0], f"-chdir={self.workdir}", *cmds[1:]]


@dataclass(frozen=True)
class PlanSummary:
    has_changes: bool
    changes: list[tuple[str, str]] = field(default_factory=list)  # (address, action)

    @property
    def counts(self) -> dict[str, int]:
        out = {"create": 0, "update": 0, "replace": 0, "delete": 0}
        for _, action in self.changes:
            out[action] += 1
        return out

    def describe(self) -> str:
        if not self.has_changes:
            return "no changes"
        c = self.counts
        return (
            f"{c['create']} to add, {c['update']} to change, {c['replace']} to replace, "
            f"{c['delete']} to destroy"
        )


@dataclass
class _Outcome:
    rc: int
    out: str
    err: str
    errors: list[dict[str, Any]]


class TerraformDriver:
    """One site's Terraform working directory. `timeout` bounds every command (seconds);
    `progress` receives a line per streamed event (resource started, still going, done)."""

    def __init__(
        self,
        workdir: Path,
        binary: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.workdir = workdir.absolute()
        self.binary = terraform_binary(binary)
        self.timeout = timeout
        self.progress = progress
        self._tf = _Terraform(self.workdir, self.binary)
        self._proc: subprocess.Popen[str] | None = None

    @property
    def is_running(self) -> bool:
        """Is a terraform command of this driver running right now?"""
        return self._proc is not None and self._proc.poll() is None

    def command(
        self, cmd: str, *args: str, ok: tuple[int, ...] = (0,), **options: Any
    ) -> tuple[int, str, str]:
        """Run one terraform command with the table's flags; raise unless its exit code is `ok`."""
        flags = {**_FLAGS.get(cmd, {}), **options}
        if cmd in _STREAMED:
            flags["json"] = IsFlagged
        argv = self._tf.generate_cmd_string(cmd, *args, **flags)
        outcome = self._run(cmd, argv)
        if outcome.rc not in ok:
            # the diagnostics first: stderr may hold only a warning (e.g. of the CLI config)
            text = "\n".join([*map(diagnostic_line, outcome.errors), outcome.err or outcome.out])
            raise TerraformError(argv, outcome.rc, text, outcome.errors)
        return outcome.rc, outcome.out, outcome.err

    def _run(self, cmd: str, argv: list[str]) -> _Outcome:
        """Run `argv`, read both pipes as lines while it runs, stop it at the deadline."""
        env = {**os.environ, **ENVIRONMENT}
        proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._proc = proc
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=_pump, args=(name, pipe, lines), daemon=True)
            for name, pipe in (("out", proc.stdout), ("err", proc.stderr))
        ]
        for reader in readers:
            reader.start()
        out: list[str] = []
        err: list[str] = []
        errors: list[dict[str, Any]] = []
        open_pipes = len(readers)
        deadline = time.monotonic() + self.timeout
        try:
            while open_pipes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._interrupt(proc)
                    raise TerraformTimeout(
                        argv, self.timeout, _HINTS.get(cmd, "run the command again")
                    )
                try:
                    name, line = lines.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    continue
                if line is None:
                    open_pipes -= 1
                elif name == "err":
                    err.append(line)
                elif cmd in _STREAMED:
                    self._event(line, out, errors)
                else:
                    out.append(line)
            rc = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except KeyboardInterrupt:
            # the terminal sent SIGINT to terraform too: let it write its state before we go
            self._wait_or_kill(proc, INTERRUPT_GRACE)
            raise
        except subprocess.TimeoutExpired:
            self._interrupt(proc)
            raise TerraformTimeout(
                argv, self.timeout, _HINTS.get(cmd, "run the command again")
            ) from None
        finally:
            self._proc = None
        return _Outcome(rc, "".join(out), "".join(err), errors)

    def _event(self, line: str, out: list[str], errors: list[dict[str, Any]]) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            out.append(line)  # not an event: keep it for the error message
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        diagnostic = event.get("diagnostic") if kind == "diagnostic" else None
        if isinstance(diagnostic, dict):
            if diagnostic.get("severity") == "error":
                errors.append(diagnostic)
            elif self.progress is not None:
                self.progress(f"terraform warning: {diagnostic.get('summary', '')}")
        elif kind in _SHOWN_EVENTS and self.progress is not None:
            self.progress(str(event.get("@message", "")))

    def _interrupt(self, proc: subprocess.Popen[str]) -> None:
        """SIGINT first (terraform stops its providers and writes its state), SIGKILL after."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        self._wait_or_kill(proc, INTERRUPT_GRACE)

    @staticmethod
    def _wait_or_kill(proc: subprocess.Popen[str], grace: float) -> None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def init(self) -> None:
        self.command("init")

    def validate(self) -> dict[str, Any]:
        """`terraform validate -json` of the initialised module: `valid` and `diagnostics`."""
        _, out, _ = self.command("validate", ok=(0, 1))
        result: dict[str, Any] = json.loads(out)
        return result

    def plan(
        self, var_file: Path | None = None, destroy: bool = False, targets: Sequence[str] = ()
    ) -> PlanSummary:
        """Plan to a saved plan file; Terraform's -detailed-exitcode says 0 = none, 2 = changes.
        `targets` limits the plan to those resource addresses (and what they depend on)."""
        options: dict[str, Any] = {"out": PLAN_FILE}
        if targets:
            options["target"] = list(targets)
        if var_file is not None:
            options["var_file"] = str(var_file)
        if destroy:
            options["destroy"] = IsFlagged
        rc, _, _ = self.command("plan", ok=(0, 2), **options)
        if rc == 0:
            return PlanSummary(False)
        return PlanSummary(True, self._plan_changes())

    def _plan_changes(self) -> list[tuple[str, str]]:
        _, out, _ = self.command("show", PLAN_FILE)
        plan = json.loads(out)
        changes = []
        for rc in plan.get("resource_changes", []):
            actions = rc.get("change", {}).get("actions", [])
            action = _action_name(actions)
            if action:
                changes.append((rc["address"], action))
        return changes

    def apply_plan(self) -> None:
        """Apply the saved plan as shown; a saved plan needs no approval and takes no vars.
        When it started is recorded first: what the cloud creates after that and the state
        does not hold was left by this apply (see `last_apply_started`)."""
        if not (self.workdir / PLAN_FILE).exists():
            raise UsageError(f"no saved plan in {self.workdir}; run plan first")
        record = self.workdir / APPLY_RECORD
        record.write_text(datetime.now(UTC).isoformat() + "\n")
        try:
            self.command("apply", PLAN_FILE)
        finally:
            (self.workdir / PLAN_FILE).unlink(missing_ok=True)

    def last_apply_started(self) -> datetime | None:
        """When the last apply of this working directory started; None if none ever did."""
        try:
            return datetime.fromisoformat((self.workdir / APPLY_RECORD).read_text().strip())
        except (OSError, ValueError):
            return None

    def outputs(self) -> dict[str, Any]:
        _, out, _ = self.command("output")
        return {name: spec["value"] for name, spec in json.loads(out or "{}").items()}

    def destroy(self, var_file: Path | None = None) -> None:
        options: dict[str, Any] = {}
        if var_file is not None:
            options["var_file"] = str(var_file)
        self.command("destroy", **options)

    def _state(self) -> dict[str, Any]:
        _, out, _ = self.command("show")
        state: dict[str, Any] = json.loads(out or "{}")
        return state

    def state_addresses(self) -> list[str]:
        """Addresses of every resource in the state (empty after a complete destroy)."""
        module = self._state().get("values", {}).get("root_module", {})
        return sorted(r["address"] for r in _resources(module))

    def tracked_ids(self) -> set[str]:
        """The cloud IDs of every managed resource the state holds (empty without a state)."""
        module = self._state().get("values", {}).get("root_module", {})
        return {
            str(r["values"]["id"])
            for r in _resources(module)
            if r.get("mode") == "managed" and (r.get("values") or {}).get("id")
        }


def _pump(name: str, pipe: IO[str], lines: queue.Queue[tuple[str, str | None]]) -> None:
    for line in pipe:
        lines.put((name, line))
    lines.put((name, None))


def _action_name(actions: list[str]) -> str | None:
    if actions in (["no-op"], ["read"], []):
        return None
    if set(actions) == {"create", "delete"}:
        return "replace"
    return {"create": "create", "update": "update", "delete": "delete"}.get(actions[0])


def _resources(module: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(module.get("resources", []))
    for child in module.get("child_modules", []):
        found += _resources(child)
    return found
