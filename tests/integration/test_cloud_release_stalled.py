"""Adversarial pass adv41: a cloud-release run that stalled (h-loop: the third window in a row with no
node upgraded pauses it, not re-slotted, until the SRE resumes or cancels it) and the rollout's start
gate, which counts paused runs as in flight (`max_concurrent`, `per_customer_limit`).

The fleet and helpers of test_cloud_release.py (SQLite and PostgreSQL, no Prefect server). The stalled
run is left as `flows.outcomes._stalled` leaves one (tests/unit/test_window_stalled.py drives the flow
there): paused, its reason "stalled: ...", its start recorded, no node touched."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from inventory.db import session_scope
from inventory.models import RunState
from tests.integration.test_cloud_release import (
    CANARY,
    EARLY,
    _finish,
    _gate,
    _last_slot,
    _plan,
    _runs,
    _start,
    fleet,
)

__all__ = ["fleet"]  # the fixture, used here by name


def _to_the_broad_ring(engine: Engine) -> datetime:
    """Planned with one update per customer at once; canary and early done; c07 (initech) started at
    the returned time."""
    _plan(engine, soak_minutes=0, per_customer_limit=1)
    due = _last_slot(engine) + timedelta(minutes=1)
    _start(engine, CANARY, due)
    _finish(engine, CANARY, RunState.succeeded, due)
    _start(engine, EARLY, due)
    _finish(engine, EARLY, RunState.succeeded, due)
    _start(engine, ["c07"], due)
    return due


def _stalled(engine: Engine, name: str) -> None:
    with session_scope(engine) as session:
        run = _runs(session)[name]
        run.state = RunState.paused
        run.reason = (
            "stalled: no node upgraded in 3 windows in a row, the last as the customer's support tunnel was "
            f"closed on {name}-n1 at the window's start; not re-slotted: fix the cause, then "
            f"`upkeep resume {run.id}` in a window (or `upkeep cancel {run.id}`)"
        )
        session.add(run)


def test_a_stalled_run_that_touched_no_node_holds_none_of_its_customer_s_slots(
    fleet: Engine,
) -> None:
    """initech's broad-ring cluster c07 stalls (its support tunnel never opened: three windows, not one
    node touched). Its other broad-ring cluster c11 then waited at the gate - "1 update of this customer
    is in flight" - window after window, re-slotted each time with a 'rescheduled' mail (a missed
    window, not a carry-over: never stalled, never bounded), for as long as nobody acted on c07. Before
    the stall bound, c07 looped 'planned' and held nothing. A stalled run with no node touched is no
    update in flight: its cluster runs what it ran; the half-upgraded cluster the limits guard is not
    there."""
    due = _to_the_broad_ring(fleet)
    _stalled(fleet, "c07")  # initech
    with session_scope(fleet) as session:
        assert _runs(session)["c07"].state == RunState.paused

    assert _gate(fleet, "c11", due + timedelta(days=1)) is None  # initech's other broad cluster


def test_a_stalled_run_that_upgraded_a_node_still_counts_in_flight(fleet: Engine) -> None:
    """The same, with c03 half-upgraded (node 1 verified) before it stalled: a cluster on mixed versions
    is what the limits are for; it still holds its customer's slot."""
    from inventory.models import NodeStep, StepState

    due = _to_the_broad_ring(fleet)
    with session_scope(fleet) as session:
        run = _runs(session)["c07"]
        assert run.id is not None
        session.add(NodeStep(run_id=run.id, node_id=None, step="upgrade", state=StepState.succeeded))
    _stalled(fleet, "c07")

    assert _gate(fleet, "c11", due + timedelta(days=1)) == "1 update of this customer is in flight (limit 1)"
