"""Real parts for integration tests: one lab fleet and one Prefect test harness per session.

The lab has more clusters than any single test needs; each test that upgrades takes a cluster nobody
used yet (`fresh_cluster`), so tests stay independent without paying for a lab each.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

LAB_CLUSTERS = 8


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from upkeep.lab import Lab

    lab = Lab(tmp_path_factory.mktemp("lab"))
    lab.up(clusters=LAB_CLUSTERS, nodes=3, upgrade_seconds=0.1, health_delay=0.2)
    try:
        yield lab
    finally:
        lab.down()


_cluster_numbers = itertools.count(1)


@pytest.fixture
def fresh_cluster(lab: Any) -> str:
    """A lab cluster that no earlier test has touched."""
    clusters = list(dict.fromkeys(node["cluster"] for node in lab.status()["nodes"]))
    number = next(_cluster_numbers)
    if number > len(clusters):
        pytest.fail(f"the session lab has only {len(clusters)} clusters; raise LAB_CLUSTERS")
    return clusters[number - 1]


@pytest.fixture
def lab_settings(lab: Any, tmp_path: Path) -> Any:
    from upkeep.settings import load_settings

    return load_settings(home=tmp_path / "home", **lab.settings_overrides())


@pytest.fixture
def lab_runtime(lab: Any, lab_settings: Any, sqlite_engine: Any, prefect_harness: None) -> Iterator[Any]:
    """A flow Runtime wired to the lab and to a fresh SQLite database holding the lab's inventory."""
    yield from _runtime(lab, lab_settings, sqlite_engine)


@pytest.fixture
def lab_runtime_any_db(lab: Any, lab_settings: Any, engine: Any, prefect_harness: None) -> Iterator[Any]:
    """The same on every supported database (SQLite and PostgreSQL)."""
    yield from _runtime(lab, lab_settings, engine)


def _runtime(lab: Any, lab_settings: Any, engine: Any) -> Iterator[Any]:
    from flows import runtime as flow_runtime
    from inventory.importer import import_inventory
    from upkeep.bootstrap import build_runtime

    import_inventory(lab.inventory_path, engine=engine, actor="test")
    runtime = build_runtime(lab_settings, engine=engine)
    runtime.health_timeout = 5.0
    runtime.command_timeout = 10.0
    flow_runtime.configure(runtime)
    try:
        yield runtime
    finally:
        flow_runtime.configure(None)


def nodes_of(lab: Any, cluster: str) -> list[dict[str, Any]]:
    return [node for node in lab.status()["nodes"] if node["cluster"] == cluster]
