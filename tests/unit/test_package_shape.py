"""The package's shape, from its imports: no cycle between modules, no room (a subpackage or a
top-level module) over 15% of the lines, and layers that only import downwards: the core (site,
target, inventory, placement, checks, lifecycle) knows nothing of delivery (environments, platforms,
databases, backups, the pipeline) and delivery knows nothing of the webhook or the CLI."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "cidemo_infra"
CAP_PERCENT = 15.0
# Each room may import rooms of its own layer or below; a room not named here is core (layer 0).
LAYERS = {
    "envs": 1,
    "databases": 1,
    "backups": 1,
    "platforms": 2,
    "builds": 2,
    "pipeline": 3,
    "webhook": 4,
    "cli": 5,
    "__main__": 6,
    "bench": 6,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(n.lineno for n in ast.walk(sub) if hasattr(n, "lineno"))
    return lines


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> modules it imports (imports inside functions count; TYPE_CHECKING ones do not)."""

    def resolve(name: str) -> str | None:
        while name:
            if name in mods:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] != PACKAGE.name:
                    continue
                found = resolve(target)
                if found and found != mod and not mod.startswith(found + "."):
                    graph[mod].add(found)
    return graph


def _room(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle(_graph(_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_room_holds_over_15_percent_of_the_lines() -> None:
    lines: dict[str, int] = defaultdict(int)
    for mod, path in _modules().items():
        lines[_room(mod)] += sum(1 for line in path.read_text().splitlines() if line.strip())
    total = sum(lines.values())
    over = {
        room: round(100 * n / total, 1)
        for room, n in lines.items()
        if 100 * n / total > CAP_PERCENT
    }
    assert not over, f"rooms over {CAP_PERCENT}% of {total} lines: {over}"


def test_layers_only_import_downwards() -> None:
    upward = sorted(
        f"{mod} imports {dep}"
        for mod, deps in _graph(_modules()).items()
        for dep in deps
        if LAYERS.get(_room(dep), 0) > LAYERS.get(_room(mod), 0)
    )
    assert not upward, "imports that reach up a layer: " + "; ".join(upward)


def test_the_checks_see_a_violation() -> None:
    """The three checks above on a graph made to fail them: they can fail."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
    assert LAYERS.get(_room("cidemo_infra.pipeline.operations"), 0) > LAYERS.get(
        _room("cidemo_infra.lifecycle"), 0
    )
