"""Every third-party module the product's packages import is declared in pyproject.toml's
`[project] dependencies` (not only pulled in by another dependency, which may drop it any release)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "inventory", "scheduling", "tasks", "templates", "upkeep")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normal(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}


def _imported() -> dict[str, set[str]]:
    """Top-level module names imported anywhere in the product's packages -> the files importing them."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in PACKAGES and top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


# Modules of a distribution that a declared one pins to an exact version and exposes as part of its
# API: pydantic pins pydantic-core (its validator core; PydanticCustomError, core_schema).
COMES_WITH = {"pydantic_core": "pydantic"}


def test_every_imported_distribution_is_declared() -> None:
    dists = packages_distributions()
    declared = _declared()
    missing = {
        module: sorted(files)[0]
        for module, files in _imported().items()
        if not any(
            _normal(dist) in declared for dist in [COMES_WITH.get(module, ""), *dists.get(module, [module])]
        )
    }
    assert missing == {}, f"imported but not in pyproject's dependencies (module: first file): {missing}"


def test_the_check_sees_an_undeclared_import() -> None:
    # The check above must be able to fail: pytest is installed (dev extra) but not a dependency.
    assert not any(_normal(dist) in _declared() for dist in packages_distributions()["pytest"])
