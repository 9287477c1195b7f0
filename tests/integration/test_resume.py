"""Kill -9 of the process running an update, at five points, then `upkeep resume`: every node ends
upgraded exactly once (the nodes' own upgrade logs say so), none skipped.

The CLI runs in a subprocess against the session's Prefect test server; `UPKEEP_FAILPOINT` makes it
SIGKILL itself at a named point (see tasks/failpoints.py)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from inventory.db import session_scope
from inventory.models import Cluster, RunState, UpgradeRun
from tests.integration.conftest import cli_engine, upkeep_cli

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"
POINTS = ["mid-download", "after-node:1", "mid-upgrade:2", "mid-health:2", "after-node:3"]


def _killed_at(point: str, cli_env: dict[str, str], cluster: str) -> tuple[UpgradeRun, Any]:
    """`upkeep update` of `cluster` killed by SIGKILL at `point`: its run, left `running`, and an engine
    on the CLI's database."""
    crashed = upkeep_cli(
        {**cli_env, "UPKEEP_FAILPOINT": point}, "update", cluster, "--to", TARGET, check=False
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    engine = cli_engine(cli_env)
    with session_scope(engine) as session:
        cluster_id = session.exec(select(Cluster.id).where(Cluster.name == cluster)).one()
        run = session.exec(
            select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id).order_by(col(UpgradeRun.id).desc())
        ).first()
    assert run is not None and run.state == RunState.running  # the crash left it claimed, not finished
    return run, engine


@pytest.mark.parametrize("point", POINTS)
def test_resume_after_kill_upgrades_every_node_exactly_once(
    point: str, slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    cli_env, cluster = slow_cli_env, fresh_slow_cluster
    hosts = [n["hostname"] for n in slow_lab.status()["nodes"] if n["cluster"] == cluster]
    if point == "mid-download":  # a package an earlier test left in the shared home is never downloaded
        for cached in (Path(cli_env["UPKEEP_HOME"]) / "work" / "packages").glob("*"):
            cached.unlink()

    run, engine = _killed_at(point, cli_env, cluster)

    resumed = upkeep_cli(cli_env, "resume", str(run.id), check=False)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]

    upgrades = {host: slow_lab.upgrade_log(host) for host in hosts}
    assert {host: len(entries) for host, entries in upgrades.items()} == dict.fromkeys(hosts, 1)
    assert all(entries[0]["to"] == TARGET for entries in upgrades.values())
    with session_scope(engine) as session:
        final = session.get(UpgradeRun, run.id)
        assert final is not None and final.state == RunState.succeeded and final.active_cluster_id is None
        assert session.exec(select(Cluster.version).where(Cluster.name == cluster)).one() == TARGET
    engine.dispose()


def test_a_resume_waits_at_pre_flight_for_the_node_the_killed_process_left_coming_up(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
) -> None:
    """kill -9 in the middle of node 2's upgrade, and node 2 not yet healthy when `upkeep resume` asks it
    at pre-flight: the resume waits for it (the health wait its own health step gives it) instead of
    failing the run, notifying the customer and paging. The node comes up when the test sees the
    resume's first unhealthy answer in the node's own log, never by a clock. Without the wait this went
    green in every lab test: the lab's node was always up by the time a resumed process asked
    (adversarial pass adv32)."""
    import time

    from tests.support import forkserver

    cli_env, cluster = slow_cli_env, fresh_slow_cluster
    hosts = [n["hostname"] for n in slow_lab.status()["nodes"] if n["cluster"] == cluster]
    run, engine = _killed_at("mid-upgrade:2", cli_env, cluster)

    slow_lab.fault(hosts[1], "unhealthy")  # not up until the test says so
    log = slow_lab.node_dir(hosts[1]) / "logs" / "product.log"
    seen = len(log.read_text().splitlines()) if log.exists() else 0
    env = {**cli_env, "UPKEEP_HEALTH_TIMEOUT": "600"}  # the outcome never rests on this clock
    resume = forkserver.popen(["resume", str(run.id)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not any(": health -> 1 " in line for line in log.read_text().splitlines()[seen:]):
            assert resume.poll() is None, "the resume ended before asking node 2's health"
            assert time.monotonic() < deadline, "the resume never asked node 2's health"
            time.sleep(0.02)
        slow_lab.fault(hosts[1], "clear")
        out, err = resume.communicate(timeout=300)
    finally:
        slow_lab.fault(hosts[1], "clear")
        if resume.poll() is None:
            resume.kill()
            resume.communicate()
    assert resume.returncode == 0, out[-2000:] + err[-2000:]
    upgrades = {host: slow_lab.upgrade_log(host) for host in hosts}
    assert {host: len(entries) for host, entries in upgrades.items()} == dict.fromkeys(hosts, 1)
    with session_scope(engine) as session:
        final = session.get(UpgradeRun, run.id)
        assert final is not None and final.state == RunState.succeeded, final
    engine.dispose()
