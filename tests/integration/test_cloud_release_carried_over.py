"""A cloud-release run carried over to its next window (its window closed mid-way, or before its first
node) is in flight, not finished: how the rollout's error budget, its wave gate and its in-flight limits
count it.

Decided here (the brief's "mature behaviour"):
- error budget: a run counts once in `started` (the rate's denominator) from its first start, carried
  over or not; a halt's resume acknowledges the runs that *ended* before it (their starts and
  failures), never one still in flight: a carried-over run's start was acknowledged while its failure,
  coming after the resume, was counted against the budget afresh - `failed` ran ahead of `started`,
  was clipped to it, and two failures after a resume with `max_failures=1` did not halt the rollout;
- wave gate: a ring with a carried-over run is not finished and its soak has not begun (it counts among
  the ring's updates not finished until it ends; the soak runs from its end);
- in-flight limits: a carried-over run that changed a node (its cluster on mixed versions, and it goes
  on in its next window whatever the limits say) holds its slot of `max_concurrent` and of its
  customer's `per_customer_limit` between windows; one that changed nothing is a further update of the
  release like any other (adv51) and holds none, as a stalled one (adv41).

The fleet and helpers of test_cloud_release.py (SQLite and PostgreSQL, no Prefect server); a carry-over
is written as flows/outcomes.py `_carry_over` leaves the run: planned again, its `started_at` kept,
its slot in its next window, an upgrade step recorded if a node was changed."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from inventory.db import session_scope
from inventory.models import NodeStep, RunState, StepState
from tests.integration.test_cloud_release import (
    CANARY,
    EARLY,
    _finish,
    _gate,
    _last_slot,
    _plan,
    _runs,
    _start,
    _status,
    fleet,
)

__all__ = ["fleet"]  # the fixture, used here by name

DAY = timedelta(days=1)


def _carried_over(engine: Engine, name: str, at: datetime, *, touched: bool) -> None:
    """`name`'s running run carried over at `at` to the same time the next day, as `_carry_over` does."""
    with session_scope(engine) as session:
        run = _runs(session)[name]
        assert run.state is RunState.running and run.started_at is not None, (run.state, run.started_at)
        assert run.id is not None
        if touched:
            session.add(NodeStep(run_id=run.id, node_id=None, step="upgrade", state=StepState.succeeded))
        run.state, run.lease_owner, run.lease_until = RunState.planned, None, None
        run.slot_start, run.slot_end = at + DAY, at + DAY + timedelta(hours=1)
        session.add(run)


def _resume(engine: Engine, at: datetime) -> str:
    from flows.rollout import resume_rollout

    with session_scope(engine) as session:
        return resume_rollout("9.10.0", session=session, now=at, actor="sre")


def test_a_carried_over_run_failing_after_a_resume_counts_its_start_and_its_failure_after_it(
    fleet: Engine,
) -> None:
    """max_failures=1. Early ring: c03 and c04 fail (2 > 1: halted), c06 succeeds, c05 was carried over
    mid-way (it goes on in its next window, halted or not). The SRE resumes. c05 then fails in its next
    window, and c07 (broad) fails: two failures since the resume, over a budget of one. The resume had
    acknowledged c05's start (counted as started, in flight) and not its failure (yet to come): after
    it, 1 started and 2 failed, the failures clipped to the starts, 1 - within the budget, and the
    broad ring went on. `release status` said "started 0, failed 1" once c05 had failed."""
    _plan(fleet, max_failures=1, soak_minutes=0)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, CANARY, RunState.succeeded, due + timedelta(minutes=10))
    early_at = due + timedelta(minutes=20)
    _start(fleet, EARLY, early_at)
    _carried_over(fleet, "c05", early_at + timedelta(hours=1), touched=True)
    _finish(fleet, ["c03", "c04"], RunState.failed, early_at + timedelta(minutes=5))
    _finish(fleet, ["c06"], RunState.succeeded, early_at + timedelta(minutes=5))
    later = early_at + DAY + timedelta(hours=1, minutes=1)
    assert "halted" in (_gate(fleet, "c07", later) or "")
    assert "2 failure(s) acknowledged" in _resume(fleet, later)

    assert _gate(fleet, "c05", later) is None  # mid-way: it goes on
    _start(fleet, ["c05"], later)
    _finish(fleet, ["c05"], RunState.failed, later + timedelta(minutes=5))
    budget = _status(fleet)["budget"]
    assert (budget["started"], budget["failed"]) == (1, 1), budget  # c05: its start and its failure
    assert _gate(fleet, "c07", later + timedelta(minutes=6)) is None  # 1 failure: within the budget
    _start(fleet, ["c07"], later + timedelta(minutes=6))
    _finish(fleet, ["c07"], RunState.failed, later + timedelta(minutes=10))

    reason = _gate(fleet, "c08", later + timedelta(minutes=11)) or ""
    assert "halted: 2 failures exceed the error budget of 1 (failed: c03, c04, c05, c07)" in reason, reason
    budget = _status(fleet)["budget"]
    assert (budget["started"], budget["failed"]) == (2, 2), budget


def test_a_ring_with_a_carried_over_run_is_not_finished_and_its_soak_starts_when_that_run_ends(
    fleet: Engine,
) -> None:
    """Canary c01 succeeds; c02 is carried over before its first node (nothing changed). The early ring
    waits for it ("1 of 2 updates not finished"), not from c01's end plus the soak; once c02 ends in
    its next window, the soak runs from c02's end."""
    _plan(fleet, max_failures=1, soak_minutes=60)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, ["c01"], RunState.succeeded, due + timedelta(minutes=10))
    _carried_over(fleet, "c02", due + timedelta(minutes=20), touched=False)

    waiting = due + timedelta(hours=5)  # c01 ended and soaked long ago
    assert _gate(fleet, "c03", waiting) == "waiting for ring canary: 1 of 2 updates not finished"
    assert _status(fleet)["budget"]["started"] == 2  # c02 counted once, as started

    next_window = due + DAY + timedelta(minutes=21)
    assert _gate(fleet, "c02", next_window) is None
    _start(fleet, ["c02"], next_window)
    assert _gate(fleet, "c03", next_window) == "waiting for ring canary: 1 of 2 updates not finished"
    ended = next_window + timedelta(minutes=30)
    _finish(fleet, ["c02"], RunState.succeeded, ended)
    assert _status(fleet)["budget"]["started"] == 2  # started again: still one start
    assert "soaking until" in (_gate(fleet, "c03", ended + timedelta(minutes=59)) or "")
    assert _gate(fleet, "c03", ended + timedelta(minutes=60)) is None


def _to_the_broad_ring(engine: Engine) -> datetime:
    """One update per customer at once; canary and early done; c07 (initech) started at the returned
    time."""
    _plan(engine, soak_minutes=0, per_customer_limit=1)
    due = _last_slot(engine) + timedelta(minutes=1)
    _start(engine, CANARY, due)
    _finish(engine, CANARY, RunState.succeeded, due)
    _start(engine, EARLY, due)
    _finish(engine, EARLY, RunState.succeeded, due)
    _start(engine, ["c07"], due)
    return due


def test_a_run_carried_over_mid_way_holds_its_customer_s_slot_until_it_ends(fleet: Engine) -> None:
    """c07 (initech) is carried over after its first node (its cluster runs mixed versions; in its next
    window it goes on whatever the limits say). Between the windows the gate counted it out of flight
    (planned) and started initech's c11: in c07's next window two initech clusters were in flight with
    a limit of one."""
    due = _to_the_broad_ring(fleet)
    _carried_over(fleet, "c07", due + timedelta(hours=1), touched=True)

    between = due + timedelta(hours=2)
    assert _gate(fleet, "c11", between) == "1 update of this customer is in flight (limit 1)"
    assert _gate(fleet, "c08", between) is None  # umbrella: its own slot


def test_a_run_carried_over_before_its_first_node_holds_no_slot(fleet: Engine) -> None:
    """The same c07 carried over before its first node changed anything: a further update like any
    other (adv51), it holds no slot (as a stalled run with no node touched, adv41); initech's c11 may
    start, and c07 then waits at the gate in its next window like any planned run."""
    due = _to_the_broad_ring(fleet)
    _carried_over(fleet, "c07", due + timedelta(hours=1), touched=False)

    between = due + timedelta(hours=2)
    assert _gate(fleet, "c11", between) is None
    _start(fleet, ["c11"], between)
    assert (
        _gate(fleet, "c07", due + DAY + timedelta(hours=1))
        == "1 update of this customer is in flight (limit 1)"
    )
