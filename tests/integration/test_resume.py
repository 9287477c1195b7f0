"""Kill -9 of the process running an update, at five points, then `upkeep resume`: every node ends
upgraded exactly once (the nodes' own upgrade logs say so), none skipped.

The CLI runs in a subprocess against the session's Prefect test server; `UPKEEP_FAILPOINT` makes it
SIGKILL itself at a named point (see tasks/failpoints.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from inventory.db import make_engine, session_scope
from inventory.models import Cluster, RunState, UpgradeRun

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"
POINTS = ["mid-download", "after-node:1", "mid-upgrade:2", "mid-health:2", "after-node:3"]


@pytest.fixture(scope="module")
def slow_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Upgrades and health take long enough that a crash lands inside them."""
    from upkeep.lab import Lab

    lab = Lab(tmp_path_factory.mktemp("slowlab"))
    lab.up(clusters=len(POINTS), nodes=3, upgrade_seconds=0.6, health_delay=0.5)
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def cli_env(slow_lab: Any, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in slow_lab.settings_overrides().items()})
    env.update(
        {
            "UPKEEP_HOME": str(home),
            "UPKEEP_HEALTH_TIMEOUT": "10",
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    _upkeep(env, "inventory", "import", str(slow_lab.inventory_path))
    return env


def _upkeep(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "upkeep", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=180,
    )


@pytest.mark.parametrize("point", POINTS)
def test_resume_after_kill_upgrades_every_node_exactly_once(
    point: str, slow_lab: Any, cli_env: dict[str, str]
):
    clusters = list(dict.fromkeys(n["cluster"] for n in slow_lab.status()["nodes"]))
    cluster = clusters[POINTS.index(point)]
    hosts = [n["hostname"] for n in slow_lab.status()["nodes"] if n["cluster"] == cluster]

    crashed = _upkeep({**cli_env, "UPKEEP_FAILPOINT": point}, "update", cluster, "--to", TARGET, check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]

    engine = make_engine(f"sqlite:///{Path(cli_env['UPKEEP_HOME']) / 'upkeep.db'}")
    with session_scope(engine) as session:
        cluster_id = session.exec(select(Cluster.id).where(Cluster.name == cluster)).one()
        run = session.exec(
            select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id).order_by(col(UpgradeRun.id).desc())
        ).first()
    assert run is not None and run.state == RunState.running  # the crash left it claimed, not finished

    resumed = _upkeep(cli_env, "resume", str(run.id), check=False)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]

    upgrades = {host: slow_lab.upgrade_log(host) for host in hosts}
    assert {host: len(entries) for host, entries in upgrades.items()} == dict.fromkeys(hosts, 1)
    assert all(entries[0]["to"] == TARGET for entries in upgrades.values())
    with session_scope(engine) as session:
        final = session.get(UpgradeRun, run.id)
        assert final is not None and final.state == RunState.succeeded and final.active_cluster_id is None
        assert session.exec(select(Cluster.version).where(Cluster.name == cluster)).one() == TARGET
    engine.dispose()
