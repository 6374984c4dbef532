"""Every third-party module the package imports comes from a distribution pyproject.toml declares
(a transitive one can vanish with its parent's next release), and nothing declared is unused."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

import pytest

from cidemo_infra.data import DATA_DIR
from tests.conftest import REPO

pytestmark = pytest.mark.unit
PACKAGE = REPO / "cidemo_infra"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> dict[str, set[str]]:
    """Distribution -> the package's files that import one of its modules (data/ holds image
    sources, which run inside the images, not in the package)."""
    providers = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(DATA_DIR):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("__future__", "cidemo_infra"):
                    continue
                for dist in providers.get(top, [f"<no installed distribution has {top!r}>"]):
                    found.setdefault(_canonical(dist), set()).add(str(path.relative_to(REPO)))
    return found


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        _canonical(re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]) for dep in project["dependencies"]
    }


def test_every_imported_distribution_is_declared() -> None:
    undeclared = {d: sorted(f) for d, f in imported_distributions().items() if d not in declared()}
    assert undeclared == {}


def test_every_declared_dependency_is_imported() -> None:
    assert declared() - set(imported_distributions()) == set()
