"""The packages' import graph has no cycle (the guide: upkeep -> flows -> tasks/inventory -> scheduling,
no import runs back up), read from the source, so an import that would close a cycle fails here and not
at some caller's first import in some order. Function-local imports count too: moving an import into a
function to dodge a cycle leaves the cycle in the design."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("scheduling", "inventory", "tasks", "flows", "templates", "upkeep")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if "migrations" in parts or parts[-1] == "__main__":  # loaded by path / run, not imported
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (its package's __init__ included), wherever in the file."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    skipped: set[int] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if _type_checking_only(node):
            skipped.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    edges = set()
    for target in targets:
        parts = target.split(".")
        for end in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            candidate = ".".join(parts[:end])
            if candidate in modules and candidate != name:
                edges.add(candidate)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ importing its own submodules (to re-export them) is the one loop Python
    resolves by design: the submodule importing a sibling runs the package first. Edges from a package
    to its own submodules are left out; every other edge stays."""
    return {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_relative_and_from_imports() -> None:
    graph = _graph()
    assert len(graph) > 50
    assert "scheduling" in graph["flows.schedule"] or any(
        t.startswith("scheduling.") for t in graph["flows.schedule"]
    )


def test_the_packages_import_graph_has_no_cycle() -> None:
    cycles = _cycles(_without_package_inits(_graph()))
    assert cycles == [], (
        "import cycles (each line: modules that import each other round a loop):\n"
        + "\n".join(" <-> ".join(cycle) for cycle in cycles)
    )


def test_scheduling_imports_nothing_above_it() -> None:
    graph = _graph()
    upward = {
        (name, target)
        for name, targets in graph.items()
        if name.split(".")[0] == "scheduling"
        for target in targets
        if target.split(".")[0] != "scheduling"
    }
    assert upward == set()


def test_every_module_imports_in_a_fresh_interpreter_in_reverse_order() -> None:
    names = sorted(_modules(), reverse=True)
    code = "import importlib, sys\nfor name in sys.stdin.read().split():\n    importlib.import_module(name)\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=" ".join(names),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
