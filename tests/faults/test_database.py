"""PostgreSQL restarted in the middle of a rollout (issue #9): the runs ride it out, or stop cleanly
and resume; either way every node is upgraded exactly once and nothing is lost.

A private PostgreSQL 15 cluster (tests/faults/postgres.py; never the shared server at :5432) holds
Upkeep's database. A real `upkeep dispatch --max-running 3` process starts a due run per cluster of
a lab of its own, and while nodes are being upgraded (as their agents' logs show) the test restarts
the server with `pg_ctl restart -m fast` - every session is terminated, then the server starts
again. Afterwards at most one `upkeep resume RUN` per run left active (or one `upkeep dispatch`)
may finish the job. Checked as tests/faults/test_crash.py does: every node upgraded exactly once
by its own log, none skipped, no run left `running`, no step left `started`, every customer notice
received exactly once by a real SMTP server.

Fast variant: 3 clusters x 3 nodes, restarts after the 1st, 4th and 7th node upgrade.
`UPKEEP_SOAK=1`: 8 clusters x 3 nodes, a restart after every 2nd node upgrade.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from inventory.db import make_engine, session_scope
from inventory.models import RunState, UpgradeRun
from tests.faults.conftest import SOAK
from tests.faults.helpers import assert_rolled_out_exactly_once, rollout_due_now
from tests.faults.postgres import PrivatePostgres, missing_binaries
from tests.integration.conftest import upkeep_cli
from tests.integration.test_notices import SmtpServer
from tests.support import forkserver
from tests.support.labs import running_lab

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.prefect, pytest.mark.smtp]

CLUSTERS = 8 if SOAK else 3
MAX_RUNNING = 3
SENDER = "Upkeep <upkeep@vendor.example>"
HANG = 180  # seconds: only there to turn a hang into a failure that says where; never a timing check


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    problem = missing_binaries()
    if problem:
        pytest.skip(problem)
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def db_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Nodes slow enough (0.5 s upgrade, 0.4 s to healthy) for a restart to land mid-rollout."""
    with running_lab(
        tmp_path_factory.mktemp("dblab"), clusters=CLUSTERS, nodes=3, upgrade_seconds=0.5, health_delay=0.4
    ) as lab:
        yield lab


@pytest.fixture
def pg_rollout(
    private_pg: PrivatePostgres, db_lab: Any, prefect_harness: None, smtp: SmtpServer, tmp_path: Path
) -> Iterator[tuple[dict[str, str], Any]]:
    """CLI environment on the private server (a fresh database, migrated as the CLI does, holding the
    lab's inventory) with one due, planned run per cluster."""
    from prefect.settings import PREFECT_API_URL

    url = private_pg.create_database(f"upkeep_{os.getpid()}_{time.monotonic_ns()}")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in db_lab.settings_overrides().items()})
    env.update(
        {
            "UPKEEP_HOME": str(home),
            "UPKEEP_DATABASE_URL": url,
            "UPKEEP_HEALTH_TIMEOUT": "10",
            "UPKEEP_SMTP_HOST": "127.0.0.1",
            "UPKEEP_SMTP_PORT": str(smtp.port),
            "UPKEEP_MAIL_FROM": SENDER,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    engine = make_engine(url)
    rollout_due_now(engine, db_lab.inventory_path)
    try:
        yield env, engine
    finally:
        engine.dispose()


def _upgraded(lab: Any, hosts: list[str]) -> int:
    return sum(len(lab.upgrade_log(host)) for host in hosts)


def _restart_points() -> list[int]:
    """After how many node upgrades (fleet-wide, by the agents' logs) to restart the server."""
    total = CLUSTERS * 3
    return list(range(2, total, 2)) if SOAK else [1, 4, 7]


def _clean_failure(stderr: str) -> str | None:
    """Why a non-zero exit is not a clean one, or None. Prefect's own log lines may carry a flow's
    traceback; what the user is left with must be one `error:` line, not a traceback dump."""
    if "╭─" in stderr:  # the CLI's rich traceback for an exception it did not expect
        return "a traceback dump"
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines or not lines[-1].startswith("error:"):
        return "no closing error: line"
    return None


def _runs(engine: Any) -> dict[int, UpgradeRun]:
    with session_scope(engine) as session:
        return {run.id or 0: run for run in session.exec(select(UpgradeRun)).all()}


def test_postgres_restarted_mid_rollout_every_node_upgraded_once_nothing_lost(
    pg_rollout: Any, private_pg: PrivatePostgres, db_lab: Any, smtp: SmtpServer, record: Any, tmp_path: Path
) -> None:
    env, engine = pg_rollout
    hosts = [node["hostname"] for node in db_lab.status()["nodes"]]
    assert _upgraded(db_lab, hosts) == 0, "the lab must be fresh"
    history: list[str] = []
    points = _restart_points()

    # Output to files, not pipes: Prefect's logging would fill a pipe nobody reads while we poll.
    out_path, err_path = tmp_path / "dispatch.out", tmp_path / "dispatch.err"
    with open(out_path, "w") as out_file, open(err_path, "w") as err_file:
        dispatch = forkserver.popen(
            ["dispatch", "--max-running", str(MAX_RUNNING)],
            env=env,
            stdin=None,
            stdout=out_file,
            stderr=err_file,
        )
    try:
        for point in points:
            # Polling a file the agents write, no timing: restart once `point` upgrades are done.
            deadline = time.monotonic() + HANG
            while _upgraded(db_lab, hosts) < point and dispatch.poll() is None:
                assert time.monotonic() < deadline, f"hung before upgrade {point}: {history}"
                time.sleep(0.02)
            if dispatch.poll() is not None:
                break
            took = private_pg.restart()
            history.append(f"restart after {_upgraded(db_lab, hosts)} upgrades ({took:.2f} s)")
        dispatch.wait(timeout=HANG)
    finally:
        if dispatch.poll() is None:
            dispatch.kill()
            dispatch.wait()
    out, err = out_path.read_text(), err_path.read_text()
    history.append(
        f"dispatch: exit {dispatch.returncode}, waited for the server {err.count('database unavailable')}x, "
        f"transactions run again {err.count('running the transaction again')}x"
    )
    where = " | ".join(history)
    print(where, file=sys.stderr)
    assert private_pg.restarts, f"no restart happened mid-rollout: {where}\n{err[-3000:]}"
    if dispatch.returncode != 0:
        unclean = _clean_failure(err)
        assert unclean is None, f"dispatch failed with {unclean}: {where}\n{out[-1500:]}{err[-4000:]}"

    # At most one more command per run the restart left unfinished, as an SRE would.
    runs = _runs(engine)
    active = sorted(i for i, r in runs.items() if r.state in (RunState.running, RunState.paused))
    planned = [i for i, r in runs.items() if r.state == RunState.planned]
    commands = [["resume", str(run_id)] for run_id in active]
    if planned:
        commands.append(["dispatch", "--max-running", str(MAX_RUNNING)])
    for command in commands:
        proc = upkeep_cli(env, *command, check=False, timeout=240)
        history.append(f"{' '.join(command)}: exit {proc.returncode}")
        assert proc.returncode == 0, f"{' | '.join(history)}\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"
    sent = upkeep_cli(env, "notices", "send", check=False)
    assert sent.returncode == 0, sent.stderr[-2000:]
    where = " | ".join(history)

    # Every node upgraded exactly once, none skipped, no step left open; every notice sent once.
    assert_rolled_out_exactly_once(
        db_lab, hosts, engine, smtp.handler.ids(), f"{where}\n{err[-3000:]}", open_steps_allowed=False
    )
    print("database restarts: " + where, file=sys.stderr)
    record(
        "database",
        f"PostgreSQL restarted (pg_ctl restart -m fast) during a {CLUSTERS}-cluster "
        "x 3-node rollout: every node upgraded once, no run or step left open, every notice sent once",
        private_pg.restarts,
        detail=where,
    )
