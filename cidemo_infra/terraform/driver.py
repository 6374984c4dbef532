"""A thin driver on python-terraform 0.10.1 that works with Terraform >= 0.15 and OpenTofu.

python-terraform is abandoned and breaks on modern Terraform; each breakage is handled here:
- `destroy()` adds `-force` (removed in 0.15): we never call it and strip the flag from any command;
- `apply()` ties `-auto-approve` to `skip_plan`: we apply only saved plans, which need no approval;
- the working directory goes positionally (removed in 0.15): we insert the global `-chdir=DIR`;
- errors are not raised by default: every command is checked and raises `TerraformError`;
- `var` dicts are written to temp files (secrets on disk): we only ever pass our own `-var-file`.
Terraform's output is parsed from JSON (`show -json`, `output -json`), never from its text.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_terraform import IsFlagged, Terraform

from cidemo_infra.errors import TerraformError, UsageError

SUPPORTED_BINARIES = ("terraform", "tofu")
PLAN_FILE = "cidemo.tfplan"
_REMOVED_FLAGS = frozenset({"-force"})

# Every flag the driver passes, per command, in one place.
_FLAGS: dict[str, dict[str, Any]] = {
    "init": {"input": False, "no_color": IsFlagged},
    "plan": {"input": False, "no_color": IsFlagged, "detailed_exitcode": IsFlagged},
    "show": {"no_color": IsFlagged, "json": IsFlagged},
    "apply": {"input": False, "no_color": IsFlagged},
    "output": {"no_color": IsFlagged, "json": IsFlagged},
    "destroy": {"input": False, "no_color": IsFlagged, "auto_approve": IsFlagged},
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


class TerraformDriver:
    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        self.workdir = workdir.absolute()
        self.binary = terraform_binary(binary)
        self._tf = _Terraform(self.workdir, self.binary)
        os.environ["TF_IN_AUTOMATION"] = "1"
        os.environ["TF_INPUT"] = "0"

    def command(
        self, cmd: str, *args: str, ok: tuple[int, ...] = (0,), **options: Any
    ) -> tuple[int, str, str]:
        """Run one terraform command with the table's flags; raise unless its exit code is `ok`."""
        flags = {**_FLAGS.get(cmd, {}), **options}
        argv = self._tf.generate_cmd_string(cmd, *args, **flags)
        rc, out, err = self._tf.cmd(cmd, *args, raise_on_error=False, **flags)
        if rc not in ok:
            raise TerraformError(argv, rc, err or out or "")
        return rc, out, err

    def init(self) -> None:
        self.command("init")

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
        """Apply the saved plan as shown; a saved plan needs no approval and takes no vars."""
        if not (self.workdir / PLAN_FILE).exists():
            raise UsageError(f"no saved plan in {self.workdir}; run plan first")
        try:
            self.command("apply", PLAN_FILE)
        finally:
            (self.workdir / PLAN_FILE).unlink(missing_ok=True)

    def outputs(self) -> dict[str, Any]:
        _, out, _ = self.command("output")
        return {name: spec["value"] for name, spec in json.loads(out or "{}").items()}

    def destroy(self, var_file: Path | None = None) -> None:
        options: dict[str, Any] = {}
        if var_file is not None:
            options["var_file"] = str(var_file)
        self.command("destroy", **options)

    def state_addresses(self) -> list[str]:
        """Addresses of every resource in the state (empty after a complete destroy)."""
        _, out, _ = self.command("show")
        state = json.loads(out or "{}")
        return sorted(_addresses(state.get("values", {}).get("root_module", {})))


def _action_name(actions: list[str]) -> str | None:
    if actions in (["no-op"], ["read"], []):
        return None
    if set(actions) == {"create", "delete"}:
        return "replace"
    return {"create": "create", "update": "update", "delete": "delete"}.get(actions[0])


def _addresses(module: dict[str, Any]) -> list[str]:
    found = [r["address"] for r in module.get("resources", [])]
    for child in module.get("child_modules", []):
        found += _addresses(child)
    return found
