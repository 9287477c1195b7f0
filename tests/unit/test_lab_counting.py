"""The session labs grow before a module's first test by the clusters its tests take, counted from the
fixtures each test asks for (tests/support/labs.py). A test that calls `take_cluster` on a session lab
itself is not counted: it takes a spare, or fails with 'no untouched cluster left' once the spares are
gone - in whichever module happens to run after others on the same worker."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SESSION_LABS = {
    "lab",
    "slow_lab",
    "tunnel_lab",
    "faults_lab",
}  # the `growing_lab`s of tests/support/fixtures.py


def _counted() -> set[str]:
    """The fixture names the session labs are counted by, read from their growing_lab(...) calls."""
    tree = ast.parse((ROOT / "tests" / "support" / "fixtures.py").read_text())
    names: set[str] = set()
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "growing_lab":
            fixtures = call.args[1]
            assert isinstance(fixtures, ast.Tuple)
            names.update(str(ast.literal_eval(element)) for element in fixtures.elts)
    return names


def test_clusters_of_a_session_lab_are_taken_only_by_the_fixtures_it_is_counted_by() -> None:
    counted = _counted()
    assert {"fresh_cluster", "fresh_slow_cluster", "fresh_tunnel_cluster", "faults_cluster"} <= counted
    uncounted = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for call in ast.walk(function):
                if not isinstance(call, ast.Call) or not call.args:
                    continue
                called = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
                lab = getattr(call.args[0], "id", None)
                if called == "take_cluster" and lab in SESSION_LABS and function.name not in counted:
                    uncounted.append(f"{path.relative_to(ROOT)}:{call.lineno} in {function.name}")
    assert not uncounted, (
        "take_cluster on a session lab outside the fixtures it is counted by (ask for one of "
        f"{sorted(counted)} instead): {uncounted}"
    )
