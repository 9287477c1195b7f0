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

LAB_CLUSTERS = 96  # one per test that upgrades; cheap (an idle sshd each): 75 used on 2026-12-04
SLOW_LAB_CLUSTERS = 16  # 12 used on 2026-12-04


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # 30 s by default: on this shared 2-core machine under load the server took longer and every test
    # of the session errored at setup ("Timed out while attempting to connect to ephemeral ...").
    harness = prefect_test_harness(server_startup_timeout=180)
    with harness, temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
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


@pytest.fixture(scope="session")
def slow_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second fleet whose upgrades and health checks take long enough for a crash, a pause or an
    approval to land in the middle of them."""
    from upkeep.lab import Lab

    lab = Lab(tmp_path_factory.mktemp("slowlab"))
    lab.up(clusters=SLOW_LAB_CLUSTERS, nodes=3, upgrade_seconds=0.6, health_delay=0.5)
    try:
        yield lab
    finally:
        lab.down()


_slow_numbers = itertools.count(1)


@pytest.fixture
def fresh_slow_cluster(slow_lab: Any) -> str:
    clusters = list(dict.fromkeys(node["cluster"] for node in slow_lab.status()["nodes"]))
    number = next(_slow_numbers)
    if number > len(clusters):
        pytest.fail(f"the slow lab has only {len(clusters)} clusters; raise SLOW_LAB_CLUSTERS")
    return clusters[number - 1]


@pytest.fixture(scope="session")
def slow_cli_env(
    slow_lab: Any, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for running the real `upkeep` CLI in a subprocess against the slow lab, a SQLite
    database of its own and the session's Prefect test server."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in slow_lab.settings_overrides().items()})
    env.update(
        {
            "UPKEEP_HOME": str(home),
            "UPKEEP_HEALTH_TIMEOUT": "10",
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    subprocess.run(
        [sys.executable, "-m", "upkeep", "inventory", "import", str(slow_lab.inventory_path)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return env


def upkeep_cli(env: dict[str, str], *args: str, check: bool = True, timeout: float = 180) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "upkeep", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def cli_engine(env: dict[str, str]) -> Any:
    from inventory.db import make_engine

    return make_engine(f"sqlite:///{Path(env['UPKEEP_HOME']) / 'upkeep.db'}")


@pytest.fixture(scope="session")
def jump_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fleet reachable only through its jump host (the inventory says so)."""
    from upkeep.lab import Lab

    lab = Lab(tmp_path_factory.mktemp("jumplab"))
    lab.up(clusters=2, nodes=3, access="jump", upgrade_seconds=0.1, health_delay=0.1)
    try:
        yield lab
    finally:
        lab.down()
