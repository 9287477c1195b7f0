"""kill -9 of the process running a multi-cluster rollout, at chosen points, then resume until done:
every node upgraded exactly once (its agent's own log), none skipped, the run records consistent, every
customer notice sent exactly once (a real SMTP server counts them).

The rollout is a set of due, planned runs - what `upkeep schedule` leaves for the dispatcher. Each
round runs a real `upkeep` process against the session's Prefect test server: `upkeep dispatch`
(starts the due runs in this process, in parallel) while runs are still planned, else
`upkeep resume RUN` for a run a kill left behind. `UPKEEP_FAILPOINT` makes the process SIGKILL
itself at the chosen point (tasks/failpoints.py): mid-download, mid-upgrade:N, mid-health:N,
after-node:N. With several runs in one dispatcher the point hits whichever run gets there first and
kills the others wherever they are.

`make test`: 3 clusters x 3 nodes and one fixed plan (FIXED_PLAN): the dispatcher killed
mid-download, then resumes killed mid-upgrade, after a node and mid-health, each point certain to be
reached (a round that is not killed fails the test), then a resume per run; the same rounds every
run, so its cost does not depend on a draw. `UPKEEP_SOAK=1`: 10 clusters x 3 nodes and 20 points a
seeded generator picks (`UPKEEP_CRASH_POINTS=N` or `UPKEEP_FAULTS_SEED=<seed>` picks them on 3
clusters too). The seed is printed; `UPKEEP_FAULTS_SEED=<seed>` replays a failing sequence. Every
round's wall time is printed and recorded with its outcome. The five fixed points on a single
`upkeep update` are tests/integration/test_resume.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from inventory.db import make_engine, session_scope
from inventory.models import Node, NodeStep, RunState, StepState, UpgradeRun
from inventory.run_report import node_rows
from tests.faults.conftest import SOAK
from tests.faults.helpers import TARGET, assert_rolled_out_exactly_once, rollout_due_now
from tests.integration.conftest import upkeep_cli
from tests.integration.test_notices import SmtpServer

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.prefect, pytest.mark.smtp]

KILL_POINTS = int(os.environ.get("UPKEEP_CRASH_POINTS") or (20 if SOAK else 3))
# Seeded random points in the soak, or when a seed or a number of points is asked for; else FIXED_PLAN.
RANDOM_POINTS = SOAK or any(os.environ.get(v) for v in ("UPKEEP_FAULTS_SEED", "UPKEEP_CRASH_POINTS"))
# `make test`'s rounds: (run to resume, None for `upkeep dispatch`; the kill point). Every kind of point,
# with dispatch and with resume, and each certain to be reached, so every round is a kill. Runs are
# numbered in cluster order (acme-c1 1, globex-c2 2, initech-c3 3).
FIXED_PLAN: list[tuple[int | None, str]] = [
    (None, "mid-download"),  # the dispatcher has claimed all three runs; the first to download dies
    (1, "mid-upgrade:1"),  # run 1's first upgrade command cut; the node finishes it on its own
    (1, "after-node:2"),  # run 1: node 1 found upgraded (health, verify), node 2 done, then killed
    (2, "mid-health:2"),  # run 2: nodes 1-2 upgraded, killed while node 2 comes up
]
# Then one resume per run: run 1's must skip its two done nodes (redone, they are verified twice), run
# 2's finds node 2 upgraded but not verified, run 3 starts from its claim by the killed dispatcher.
MAX_RUNNING = 4
SENDER = "Upkeep <upkeep@vendor.example>"


@pytest.fixture
def smtp() -> Any:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rollout(crash_lab: Any, prefect_harness: None, smtp: SmtpServer, tmp_path: Path) -> Any:
    """CLI environment (own home and SQLite database, the crash lab, the SMTP server) with one due
    run planned per cluster."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in crash_lab.settings_overrides().items()})
    env.update(
        {
            "UPKEEP_HOME": str(home),
            "UPKEEP_HEALTH_TIMEOUT": "10",
            "UPKEEP_SMTP_HOST": "127.0.0.1",
            "UPKEEP_SMTP_PORT": str(smtp.port),
            "UPKEEP_MAIL_FROM": SENDER,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    engine = make_engine(f"sqlite:///{home / 'upkeep.db'}")
    rollout_due_now(engine, crash_lab.inventory_path)
    try:
        yield env, engine
    finally:
        engine.dispose()


def _runs(engine: Any) -> dict[int, UpgradeRun]:
    with session_scope(engine) as session:
        return {run.id or 0: run for run in session.exec(select(UpgradeRun)).all()}


def _done_positions(engine: Any, run_id: int) -> set[int]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(Node.position)
            .join(NodeStep, col(NodeStep.node_id) == col(Node.id))
            .where(
                NodeStep.run_id == run_id, NodeStep.step == "verify", NodeStep.state == StepState.succeeded
            )
        ).all()
    return set(rows)


def _points(positions: list[int], downloaded: bool) -> list[str]:
    points = [f"{kind}:{n}" for n in positions for kind in ("mid-upgrade", "mid-health", "after-node")]
    return points if downloaded else [*points, "mid-download"]


def test_kill_9_at_random_points_of_a_rollout_then_resume_upgrades_every_node_exactly_once(
    rollout: Any, crash_lab: Any, smtp: SmtpServer, seeded: Any, record: Any
) -> None:
    env, engine = rollout
    rng = seeded("crash points") if RANDOM_POINTS else None
    package = Path(env["UPKEEP_HOME"]) / "work" / "packages" / f"upkeep-product-{TARGET}.tar.gz"
    history: list[str] = []
    how = f"seed {rng.seed_value}" if rng else "fixed plan"

    def where() -> str:
        return f"{how}; rounds so far: " + " | ".join(history)

    def random_round() -> tuple[list[str], str] | None:
        assert rng is not None
        runs = _runs(engine)
        planned = [i for i, r in runs.items() if r.state == RunState.planned]
        active = sorted(i for i, r in runs.items() if r.state in (RunState.running, RunState.paused))
        if planned and len(active) < MAX_RUNNING and (not active or rng.random() < 0.5):
            return ["dispatch", "--max-running", str(MAX_RUNNING)], rng.choice(
                _points([1, 2, 3], package.exists())
            )
        if active:
            run_id = rng.choice(active)
            left = sorted({1, 2, 3} - _done_positions(engine, run_id))
            return ["resume", str(run_id)], rng.choice(_points(left or [3], package.exists()))
        return None

    plan = [
        (["dispatch", "--max-running", str(MAX_RUNNING)] if run is None else ["resume", str(run)], point)
        for run, point in FIXED_PLAN
    ]
    for number in range(KILL_POINTS if rng else len(plan)):
        chosen = random_round() if rng else plan[number]
        if chosen is None:
            break
        command, point = chosen
        began = time.monotonic()
        proc = upkeep_cli({**env, "UPKEEP_FAILPOINT": point}, *command, check=False, timeout=240)
        outcome = "killed" if proc.returncode == -signal.SIGKILL else f"exit {proc.returncode}"
        history.append(f"{' '.join(command)} @ {point}: {outcome} ({time.monotonic() - began:.1f} s)")
        assert proc.returncode in (0, -signal.SIGKILL), (
            f"{where()}\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"
        )
        # The fixed plan's points are all reached: a round that ran to its end no longer tests a kill there.
        assert rng or outcome == "killed", f"{where()}\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"
    kills = sum("killed" in round_ for round_ in history)

    # Finish the rollout the way an SRE would: resume what the kills left, let the dispatcher start the rest.
    for _ in range(20):
        runs = _runs(engine)
        active = sorted(i for i, r in runs.items() if r.state in (RunState.running, RunState.paused))
        planned = [i for i, r in runs.items() if r.state == RunState.planned]
        if not active and not planned:
            break
        command = ["resume", str(active[0])] if active else ["dispatch", "--max-running", str(MAX_RUNNING)]
        began = time.monotonic()
        proc = upkeep_cli(env, *command, check=False, timeout=240)
        history.append(f"{' '.join(command)}: exit {proc.returncode} ({time.monotonic() - began:.1f} s)")
        assert proc.returncode == 0, f"{where()}\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"
    print("\n".join(history), file=sys.stderr)  # every round and its wall time, kills and resumes
    sent = upkeep_cli(env, "notices", "send", check=False)
    assert sent.returncode == 0, sent.stderr[-2000:]

    # Every node upgraded exactly once, by its own log, none skipped; every notice sent exactly once.
    hosts = [node["hostname"] for node in crash_lab.status()["nodes"]]
    runs_now = assert_rolled_out_exactly_once(
        crash_lab, hosts, engine, smtp.handler.ids(), where(), open_steps_allowed=True
    )
    with session_scope(engine) as session:
        for run in runs_now:
            assert {row["result"] for row in node_rows(run, session)} <= {"upgraded", "already at target"}
    record(
        "crash (kill -9) and resume",
        f"{len(runs_now)}-cluster x 3-node rollout via dispatch/resume, "
        + ("seeded kill points" if rng else "fixed kill points"),
        kills,
        detail=f"{how}: " + " / ".join(history),
    )
