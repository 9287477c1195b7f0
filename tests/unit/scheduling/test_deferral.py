"""Deferral limits: count, delay, deadline, direction."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling.deferral import Decision, DeferralPolicy, check_deferral
from scheduling.errors import SchedulingError

from .strategies import aware_datetimes

NOW = datetime(2026, 12, 1, 9, tzinfo=UTC)
CURRENT = datetime(2026, 12, 5, 9, tzinfo=UTC)


def check(new: datetime, so_far: int = 0, deadline: datetime | None = None) -> Decision:
    return check_deferral(
        DeferralPolicy(),
        current_start=CURRENT,
        new_start=new,
        deferrals_so_far=so_far,
        deadline=deadline,
        now=NOW,
    )


def test_allowed() -> None:
    decision = check(CURRENT + timedelta(days=3))
    assert decision.allowed
    assert decision.reason == "deferral 1 of 2: moves the update by 3 days to 2026-12-08 09:00 UTC"


@pytest.mark.parametrize(
    ("new", "so_far", "deadline", "reason"),
    [
        (CURRENT + timedelta(days=1), 2, None, "already deferred 2 times; the limit is 2"),
        (
            CURRENT + timedelta(days=9),
            0,
            None,
            "moves the update by 9 days; a deferral may move it by at most 7 days",
        ),
        (
            datetime(2026, 12, 12, 9, tzinfo=UTC),
            1,
            datetime(2026, 12, 10, tzinfo=UTC),
            "2026-12-12 09:00 UTC is past the release deadline 2026-12-10 00:00 UTC",
        ),
        (CURRENT - timedelta(days=1), 0, None, "new time is earlier than the current one"),
        (NOW - timedelta(minutes=1), 0, None, "new time is in the past"),
        (CURRENT, 0, None, "new time is the same as the current one"),
    ],
)
def test_refused(new: datetime, so_far: int, deadline: datetime | None, reason: str) -> None:
    assert check(new, so_far, deadline) == Decision(False, reason)


def test_exactly_at_the_limits_is_allowed() -> None:
    assert check(CURRENT + timedelta(days=7)).allowed
    assert check(CURRENT + timedelta(days=2), deadline=CURRENT + timedelta(days=2)).allowed
    assert check(CURRENT + timedelta(days=1), so_far=1).allowed


def test_bad_input() -> None:
    with pytest.raises(SchedulingError, match="deferrals so far -1: must be at least 0"):
        check(CURRENT + timedelta(days=1), so_far=-1)
    with pytest.raises(SchedulingError, match="has no time zone"):
        check(datetime(2026, 12, 6))
    with pytest.raises(SchedulingError, match="max_delay"):
        DeferralPolicy(max_delay=timedelta(0))


policies = st.builds(
    DeferralPolicy,
    max_count=st.integers(0, 4),
    max_delay=st.integers(1, 14 * 24).map(lambda h: timedelta(hours=h)),
)
moves = st.integers(-3 * 24 * 60, 20 * 24 * 60).map(lambda m: timedelta(minutes=m))


@settings(deadline=None)
@given(
    policy=policies,
    now=aware_datetimes,
    lead=st.integers(0, 10 * 24 * 60),
    deadline_after=st.none() | st.integers(0, 30 * 24 * 60),
    requests=st.lists(moves, max_size=8),
)
def test_deferral_limits_hold_over_any_sequence(
    policy: DeferralPolicy, now: datetime, lead: int, deadline_after: int | None, requests: list[timedelta]
) -> None:
    """However a customer asks, an update is deferred at most max_count times, each time by at most
    max_delay, never earlier, never into the past and never past the deadline; and any request that
    respects every limit is granted."""
    # Arithmetic between datetimes of the same ZoneInfo is wall-clock arithmetic in Python, so the
    # test's own reckoning is done in UTC; the rule itself still gets the zoned `now`.
    zoned_now, now = now, now.astimezone(UTC)
    start = now + timedelta(minutes=lead)
    deadline = None if deadline_after is None else start + timedelta(minutes=deadline_after)
    current, granted = start, 0
    for move in requests:
        new = current + move
        decision = check_deferral(
            policy,
            current_start=current,
            new_start=new,
            deferrals_so_far=granted,
            deadline=deadline,
            now=zoned_now,
        )
        within = (
            granted < policy.max_count
            and new >= now
            and timedelta(0) < move <= policy.max_delay
            and (deadline is None or new <= deadline)
        )
        assert decision.allowed == within, decision.reason
        if decision.allowed:
            current, granted = new, granted + 1
    assert granted <= policy.max_count
    assert current - start <= policy.max_delay * policy.max_count
    if deadline is not None and current != start:
        assert current <= deadline
