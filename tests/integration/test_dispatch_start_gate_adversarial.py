"""Adversarial pass on the in-process dispatcher's start gate and its claims at a fresh clock (#19,
commit 92f2c63): a run that waits unclaimed for a start slot is claimed at the clock of its claim, not
the tick's start. SQLite and PostgreSQL; no lab: the flow a claim would start is replaced by a
recorder at its import seam, so only the claim is exercised. No assert depends on a sleep."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

import flows.product_update
from flows import dispatch as dispatcher
from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from inventory.outbox import Notice
from tests.support.fleets import one_node_fleet, planned_run

TUESDAY = datetime(2026, 12, 1, tzinfo=UTC)
# The window: every day 10:00-12:00 UTC; one node takes 10 min (Runtime.per_node_estimate).
WINDOW = {"days": "mon-sun", "start": "10:00", "duration": "2h"}


def _world(engine: Any, tmp_path: Path, clusters: int = 1) -> Runtime:
    clock = TUESDAY.replace(hour=11)
    return one_node_fleet(
        engine, tmp_path, {"acme": clusters}, clock=lambda: clock, window=WINDOW, name="c{i:02d}"
    )


def _plan(engine: Any, name: str, slot: datetime) -> int:
    return planned_run(engine, name, slot, told=slot - timedelta(days=5), length=timedelta(minutes=30))


@pytest.fixture
def flows_started(monkeypatch: pytest.MonkeyPatch, prefect_harness: None) -> list[dict[str, Any]]:
    """The product-update flows the in-process tick would start, recorded instead of run (the tick's
    workers still open their Prefect client: the session's test server, not an ephemeral one each)."""
    started: list[dict[str, Any]] = []

    def product_update(**parameters: Any) -> None:
        started.append(parameters)

    monkeypatch.setattr(flows.product_update, "product_update", product_update)
    return started


def test_a_run_whose_window_closed_while_it_waited_for_a_start_slot_is_not_started_late(
    engine: Any, tmp_path: Path, flows_started: list[dict[str, Any]]
) -> None:
    """The tick began at 11:00 (an hour left in the 10:00-12:00 window, its missed-window pass found
    nothing to move); the run waited unclaimed for a start slot until 11:55, when one 10-min node no
    longer fits. Claimed at 11:55 (the commit's fresh clock, "its window may have closed meanwhile"),
    it must not start outside the time the customer was told: it moves to its next window with a
    notice, as the tick's missed-window pass would have moved it."""
    runtime = _world(engine, tmp_path)
    run_id = _plan(engine, "c00", TUESDAY.replace(hour=10, minute=30))
    tick_began = TUESDAY.replace(hour=11)
    assert dispatcher.reslot_missed(runtime, tick_began) == []  # still room at the tick's start
    runtime.clock = lambda: TUESDAY.replace(hour=11, minute=55)  # the claim, after the wait

    claims = dispatcher._run_in_process(runtime, tick_began, 1, logging.getLogger("test"), most=4)

    assert (claims, flows_started) == ([], [])
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.state == RunState.planned, run
        assert run.slot_start is not None and run.slot_start >= TUESDAY.replace(day=2, hour=10)
        assert session.exec(select(Notice).where(Notice.update_ref == f"update-{run_id}")).all()


def test_a_claim_that_fails_gives_its_start_slot_back(
    engine: Any, tmp_path: Path, flows_started: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose claim raises (a PostgreSQL deadlock or a SQLite lock time-out in the claim's
    transaction) ends, and the tick reports it; its start slot must come back, or every other worker
    of the tick waits STARTING_WAIT (60 s, with no slot given back meanwhile) and then all of them
    start without slots - the herd the gate exists to stop. One slot, never waited for: whatever the
    interleaving, the gate ends the tick with its slot."""
    from sqlalchemy.exc import OperationalError

    runtime = _world(engine, tmp_path, clusters=2)
    due = [_plan(engine, f"c{i:02d}", TUESDAY.replace(hour=10, minute=30)) for i in range(2)]
    gates: list[Any] = []

    class Gate(dispatcher._StartGate):
        def __init__(self, slots: int) -> None:
            super().__init__(slots)
            gates.append(self)

    claim_next = dispatcher._claim_next
    failed: list[bool] = []

    def once_locked(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(True)
            raise OperationalError("claim", {}, Exception("database is locked"))
        return claim_next(*args, **kwargs)

    monkeypatch.setattr(dispatcher, "_StartGate", Gate)
    monkeypatch.setattr(dispatcher, "_claim_next", once_locked)
    monkeypatch.setattr(dispatcher, "STARTING_AT_ONCE", 1)
    monkeypatch.setattr(dispatcher, "STARTING_WAIT", 0.0)

    with pytest.raises(OperationalError):
        dispatcher._run_in_process(runtime, TUESDAY.replace(hour=11), 2, logging.getLogger("test"), most=4)

    assert {p["run_id"] for p in flows_started} <= set(due) and flows_started  # the other worker went on
    (gate,) = gates
    assert gate.take(), "the failed claim's start slot was never given back"
