"""The start gate's pure rules (flows.rollout_rules): ring order and soak, the rollout-wide error budget
(count and rate, counted from the last resume), and the in-flight limits. No database: rollout members
are plain table objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.rollout_rules import (
    RingTally,
    acknowledge,
    budget_reason,
    concurrency_reason,
    tally,
    wave_reason,
)
from inventory.models import Cluster, RunState, UpgradeRun
from inventory.releases import Member, MemberStatus, RolloutCluster
from scheduling.waves import ErrorBudget

NOW = datetime(2026, 12, 8, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
COUNT_1 = ErrorBudget(max_failures=1, max_failure_rate=None)


def _member(
    ring: str, state: RunState | None, *, started: bool = True, finished: datetime | None = None
) -> Member:
    entry = RolloutCluster(rollout_id=1, cluster_id=1, ring=ring, created_at=NOW, updated_at=NOW)
    cluster = Cluster(id=1, customer_id=1, name="c", version="9.9.0")
    if state is None:
        entry.status = MemberStatus.skipped
        return Member(entry, cluster, None)
    run = UpgradeRun(cluster_id=1, from_version="9.9.0", to_version="9.10.0", state=state)
    run.started_at = NOW - 2 * HOUR if started else None
    run.finished_at = finished
    return Member(entry, cluster, run)


def _ring(ring: str, *, runs: int = 0, active: int = 0, finished: datetime | None = None) -> RingTally:
    return RingTally(ring, runs=runs, active=active, started=runs - active, last_finished=finished)


# -- tally ---------------------------------------------------------------------------------------------


def test_tally_counts_what_the_gate_needs_per_ring() -> None:
    members = [
        _member("canary", RunState.succeeded, finished=NOW - 3 * HOUR),
        _member("canary", RunState.failed, finished=NOW - 2 * HOUR),
        _member("canary", RunState.cancelled, started=False, finished=NOW - HOUR),
        _member("early", RunState.running),
        _member("early", RunState.paused),
        _member("early", RunState.planned, started=False),
        _member("early", RunState.failed, started=False, finished=NOW),  # never started, still failed
        _member("broad", None),  # skipped: no run
    ]
    canary, early, broad = tally(members)
    assert canary == RingTally(
        "canary", runs=3, active=0, started=2, failed=1, ended=2, last_finished=NOW - HOUR
    )
    assert early == RingTally("early", runs=4, active=3, started=3, failed=1, ended=1, last_finished=NOW)
    assert broad == RingTally("broad")


def test_a_resume_acknowledges_the_runs_that_ended_not_one_carried_over() -> None:
    """A carried-over run (planned again, its start kept) counts once as started and is in flight: a
    resume acknowledges neither its start nor (yet to come) its failure; once it fails after the
    resume, both count against the budget afresh (tests/integration/test_cloud_release_carried_over.py)."""
    carried = _member("early", RunState.planned)  # started, carried over to its next window
    members = [
        _member("canary", RunState.failed, finished=NOW),
        _member("canary", RunState.succeeded),
        carried,
    ]
    assert acknowledge(tally(members)) == (2, 1)
    assert sum(t.started for t in tally(members)) == 3
    assert carried.run is not None
    carried.run.state = RunState.failed  # it fails in its next window, after the resume
    assert (
        budget_reason(ErrorBudget(0, None), tally(members), 2, 1) == "1 failure exceeds the error budget of 0"
    )


def test_tally_keeps_unknown_rings_after_the_default_ones() -> None:
    assert [t.ring for t in tally([_member("zeta", RunState.planned)])] == [
        "canary",
        "early",
        "broad",
        "zeta",
    ]


# -- ring order and soak -------------------------------------------------------------------------------


def test_the_first_ring_never_waits() -> None:
    assert wave_reason("canary", [_ring("canary", runs=3, active=3)], soak=HOUR, now=NOW) is None


def test_a_ring_waits_for_every_earlier_ring_to_finish() -> None:
    tallies = [_ring("canary", runs=2, active=1), _ring("early", runs=4, active=4)]
    assert (
        wave_reason("early", tallies, soak=HOUR, now=NOW)
        == "waiting for ring canary: 1 of 2 updates not finished"
    )
    assert (
        wave_reason("broad", tallies, soak=HOUR, now=NOW)
        == "waiting for ring canary: 1 of 2 updates not finished"
    )
    done = [_ring("canary", runs=2, finished=NOW - 2 * HOUR), _ring("early", runs=4, active=1)]
    assert (
        wave_reason("broad", done, soak=HOUR, now=NOW)
        == "waiting for ring early: 1 of 4 updates not finished"
    )


def test_the_next_ring_soaks_after_the_last_run_of_the_previous_one() -> None:
    tallies = [_ring("canary", runs=2, finished=NOW - 30 * timedelta(minutes=1))]
    reason = wave_reason("early", tallies, soak=HOUR, now=NOW)
    assert (
        reason
        == "waiting for ring canary: previous wave is soaking until 2026-12-08 12:30 UTC (30 minutes to go)"
    )
    assert wave_reason("early", tallies, soak=HOUR, now=NOW + 30 * timedelta(minutes=1)) is None  # exactly
    assert wave_reason("early", tallies, soak=timedelta(0), now=NOW) is None


def test_rings_without_runs_hold_no_one_up_and_soak_counts_from_the_nearest_ring_with_runs() -> None:
    # early: every cluster skipped or blocked; broad soaks after canary
    tallies = [_ring("canary", runs=1, finished=NOW - 10 * timedelta(minutes=1)), _ring("early")]
    assert "ring canary: previous wave is soaking" in (
        wave_reason("broad", tallies, soak=HOUR, now=NOW) or ""
    )
    assert wave_reason("broad", [_ring("canary"), _ring("early")], soak=HOUR, now=NOW) is None


def test_a_finish_time_after_now_is_clock_skew_not_an_error() -> None:
    tallies = [_ring("canary", runs=1, finished=NOW + timedelta(seconds=5))]
    assert "soaking until 2026-12-08 13:00 UTC" in (wave_reason("early", tallies, soak=HOUR, now=NOW) or "")


def test_a_ring_that_is_not_listed_never_starts() -> None:
    assert (
        wave_reason("beta", [], soak=HOUR, now=NOW)
        == "ring 'beta' is not one of canary, early, broad: not started"
    )


# -- error budget ----------------------------------------------------------------------------------------


def _failed(started: int, failed: int) -> list[RingTally]:
    return [RingTally("canary", runs=started, started=started, failed=failed)]


def test_count_budget_is_ssm_max_errors() -> None:
    assert budget_reason(COUNT_1, _failed(5, 1)) is None  # reaching the budget is within it
    assert budget_reason(COUNT_1, _failed(5, 2)) == "2 failures exceed the error budget of 1"
    assert budget_reason(ErrorBudget(0, None), _failed(3, 1)) == "1 failure exceeds the error budget of 0"


def test_rate_budget_is_exact_and_over_the_runs_started() -> None:
    ten_percent = ErrorBudget(None, 10)
    assert budget_reason(ten_percent, _failed(10, 1)) is None  # exactly 10%
    assert (
        budget_reason(ten_percent, _failed(9, 1))
        == "1 of 9 started (11.11%) failed, over the 10% error budget"
    )
    assert budget_reason(ten_percent, _failed(0, 0)) is None


def test_either_limit_halts_when_both_are_set() -> None:
    both = ErrorBudget(3, 10)
    assert budget_reason(both, _failed(100, 3)) is None
    assert "exceed the error budget of 3" in (budget_reason(both, _failed(100, 4)) or "")
    assert "over the 10% error budget" in (budget_reason(both, _failed(20, 3)) or "")


def test_the_budget_counts_from_the_last_resume() -> None:
    tallies = [RingTally("canary", runs=2, started=2), RingTally("early", runs=4, started=4, failed=2)]
    assert budget_reason(COUNT_1, tallies) is not None
    assert budget_reason(COUNT_1, tallies, acked_started=6, acked_failed=2) is None
    more = [*tallies, RingTally("broad", runs=3, started=3, failed=2)]
    assert (
        budget_reason(COUNT_1, more, acked_started=6, acked_failed=2)
        == "2 failures exceed the error budget of 1"
    )
    rate = ErrorBudget(None, 50)  # after the resume: 2 of 3 started failed
    assert "2 of 3 started" in (budget_reason(rate, more, acked_started=6, acked_failed=2) or "")


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 10))
def test_count_budget_halts_exactly_above_max_failures(started: int, failed: int, limit: int) -> None:
    failed = min(failed, started)
    halted = budget_reason(ErrorBudget(limit, None), _failed(started, failed)) is not None
    assert halted == (failed > limit)


# -- in-flight limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "customer", "expected"),
    [
        (0, 0, None),
        (9, 1, None),
        (10, 0, "10 updates of this release are in flight (limit 10)"),
        (3, 2, "2 updates of this customer are in flight (limit 2)"),
        (1, 1, None),
    ],
)
def test_in_flight_limits(in_flight: int, customer: int, expected: str | None) -> None:
    assert concurrency_reason(in_flight, customer, max_concurrent=10, per_customer_limit=2) == expected
    assert concurrency_reason(1, 1, max_concurrent=1, per_customer_limit=5) == (
        "1 update of this release is in flight (limit 1)"
    )
