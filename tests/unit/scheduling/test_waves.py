"""Release waves: ring order, SSM-style error budgets, soak gating."""

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling.errors import SchedulingError
from scheduling.waves import (
    RINGS_DEFAULT,
    Decision,
    ErrorBudget,
    budget_exceeded,
    order_by_ring,
    wave_may_start,
)

NOW = datetime(2026, 12, 2, 9, tzinfo=UTC)


def test_order_by_ring_is_stable() -> None:
    clusters = [("a", "broad"), ("b", "canary"), ("c", "early"), ("d", "canary"), ("e", "broad")]
    got = order_by_ring(clusters, key=lambda c: c[1])
    assert [name for name, _ in got] == ["b", "d", "c", "a", "e"]
    assert RINGS_DEFAULT == ("canary", "early", "broad")


def test_order_by_custom_rings_and_unknown_ring() -> None:
    assert order_by_ring(
        ["x", "y"], key=lambda c: {"x": "late", "y": "first"}[c], rings=("first", "late")
    ) == [
        "y",
        "x",
    ]
    with pytest.raises(SchedulingError, match="ring 'canry' is not one of canary, early, broad"):
        order_by_ring(["x"], key=lambda _: "canry")
    with pytest.raises(SchedulingError, match="distinct"):
        order_by_ring([], key=str, rings=("a", "a"))


@pytest.mark.parametrize(
    ("budget", "started", "failed", "exceeded"),
    [
        (ErrorBudget(2, None), 10, 2, None),
        (ErrorBudget(2, None), 10, 3, "3 failures exceed the error budget of 2"),
        (ErrorBudget(0, None), 5, 1, "1 failure exceeds the error budget of 0"),
        (ErrorBudget(None, 10), 10, 1, None),  # exactly 10% is within a 10% budget
        (ErrorBudget(None, 10), 9, 1, "1 of 9 started (11.11%) failed, over the 10% error budget"),
        (ErrorBudget(None, 10), 0, 0, None),
        (ErrorBudget(None, 0.1), 1000, 1, None),
        (ErrorBudget(None, 0), 1, 1, "1 of 1 started (100%) failed, over the 0% error budget"),
        (ErrorBudget(5, 10), 20, 3, "3 of 20 started (15%) failed, over the 10% error budget"),
        (ErrorBudget(1, 50), 20, 2, "2 failures exceed the error budget of 1"),
    ],
)
def test_budget_exceeded(budget: ErrorBudget, started: int, failed: int, exceeded: str | None) -> None:
    assert budget_exceeded(budget, started, failed) == exceeded


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, None), "needs max_failures or max_failure_rate"),
        ((-1, None), "max_failures -1: must be at least 0"),
        ((None, 101), "max_failure_rate 101: expected a percentage 0..100"),
        ((None, float("nan")), "max_failure_rate nan"),
        ((True, None), "not a whole number"),
    ],
)
def test_budget_validation(args: tuple[object, object], message: str) -> None:
    with pytest.raises(SchedulingError, match=message):
        ErrorBudget(*args)  # type: ignore[arg-type]


def test_budget_counts_validation() -> None:
    with pytest.raises(SchedulingError, match="clusters failed 3 is more than clusters started 2"):
        budget_exceeded(ErrorBudget(1, None), 2, 3)


@settings(deadline=None)
@given(
    max_failures=st.none() | st.integers(0, 50),
    rate=st.none() | st.floats(0, 100),
    started=st.integers(0, 500),
    data=st.data(),
)
def test_budget_matches_ssm_semantics(
    max_failures: int | None, rate: float | None, started: int, data: st.DataObject
) -> None:
    if max_failures is None and rate is None:
        return
    failed = data.draw(st.integers(0, started))
    reason = budget_exceeded(ErrorBudget(max_failures, rate), started, failed)
    by_count = max_failures is not None and failed > max_failures
    # Exact rationals: float division could round a ratio that equals the budget to just above it.
    by_rate = rate is not None and started > 0 and Fraction(failed * 100, started) > Fraction(rate)
    assert (reason is not None) == (by_count or by_rate)
    # Monotone: one more failure never brings a stopped wave back within budget.
    if reason is not None and failed < started:
        assert budget_exceeded(ErrorBudget(max_failures, rate), started, failed + 1) is not None


def test_wave_gate() -> None:
    soak = timedelta(hours=24)
    assert wave_may_start(NOW - timedelta(hours=25), soak, NOW, None).allowed
    assert wave_may_start(NOW - soak, soak, NOW, None).allowed
    assert wave_may_start(NOW - timedelta(hours=20), soak, NOW, None) == Decision(
        False, "previous wave is soaking until 2026-12-02 13:00 UTC (4 hours to go)"
    )
    assert wave_may_start(None, soak, NOW, None) == Decision(False, "previous wave has not finished")
    stopped = wave_may_start(NOW - timedelta(days=3), soak, NOW, "3 failures exceed the error budget of 2")
    assert stopped == Decision(
        False, "previous wave exceeded its error budget: 3 failures exceed the error budget of 2"
    )


def test_wave_gate_validation() -> None:
    with pytest.raises(SchedulingError, match="after now"):
        wave_may_start(NOW + timedelta(hours=1), timedelta(hours=1), NOW, None)
    with pytest.raises(SchedulingError, match="has no time zone"):
        wave_may_start(datetime(2026, 12, 1), timedelta(hours=1), NOW, None)
    with pytest.raises(SchedulingError, match="soak"):
        wave_may_start(NOW, timedelta(hours=-1), NOW, None)
