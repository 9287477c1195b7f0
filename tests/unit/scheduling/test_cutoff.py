"""The cutoff rule (scheduling/cutoff.py): the window, not a slot sized to the estimate."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from scheduling.blackouts import Blackout
from scheduling.cutoff import node_may_start, open_window, room_for_a_node
from scheduling.errors import SchedulingError
from scheduling.windows import Interval, WeeklyWindow

TUE = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
DAILY_HOUR = WeeklyWindow(frozenset(range(7)), time(3, 0), timedelta(hours=1), "UTC")
DAILY_2H = WeeklyWindow(frozenset(range(7)), time(3, 0), timedelta(hours=2), "UTC")


def test_open_window_is_the_whole_occurrence_open_now() -> None:
    assert open_window([DAILY_HOUR], [], TUE + timedelta(minutes=50)) == Interval(
        TUE, TUE + timedelta(hours=1)
    )
    assert open_window([DAILY_HOUR], [], TUE + timedelta(hours=1)) is None  # half-open: closed at its end
    assert open_window([DAILY_HOUR], [], TUE - timedelta(seconds=1)) is None


def test_open_window_takes_the_longest_of_overlapping_windows() -> None:
    assert open_window([DAILY_HOUR, DAILY_2H], [], TUE).end == TUE + timedelta(hours=2)


def test_back_to_back_windows_are_one_stretch_for_the_cutoff() -> None:
    always = WeeklyWindow(frozenset(range(7)), time(0, 0), timedelta(hours=24), "UTC")
    window = open_window([always], [], TUE)
    assert window is not None and window.start == datetime(2026, 11, 24, tzinfo=UTC)
    assert window.end == TUE + timedelta(days=8)  # followed as far as CHAIN, never closing at midnight
    evening = WeeklyWindow(frozenset([1]), time(22, 0), timedelta(hours=2), "UTC")
    night = WeeklyWindow(frozenset([2]), time(0, 0), timedelta(hours=1), "UTC")
    late = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)
    assert open_window([evening, night], [], late).end == datetime(2026, 11, 25, 1, 0, tzinfo=UTC)


def test_open_window_ends_where_a_blackout_begins_and_is_none_inside_one() -> None:
    late = WeeklyWindow(frozenset(range(7)), time(22, 0), timedelta(hours=4), "UTC")
    freeze = Blackout(start=date(2026, 11, 25), end=date(2026, 11, 25), tz="UTC", reason="freeze")
    evening = datetime(2026, 11, 24, 22, 30, tzinfo=UTC)
    assert open_window([late], [freeze], evening) == Interval(
        datetime(2026, 11, 24, 22, 0, tzinfo=UTC), datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
    )
    assert open_window([late], [freeze], datetime(2026, 11, 25, 1, 0, tzinfo=UTC)) is None


def test_a_node_starts_only_if_it_finishes_before_the_window_closes() -> None:
    end = TUE + timedelta(minutes=30)
    assert node_may_start(TUE + timedelta(minutes=20), end, timedelta(minutes=10))
    assert not node_may_start(TUE + timedelta(minutes=20, seconds=1), end, timedelta(minutes=10))
    with pytest.raises(SchedulingError, match="per-node estimate"):
        node_may_start(TUE, end, timedelta(0))


def test_room_for_a_node_needs_an_open_window() -> None:
    window = Interval(TUE, TUE + timedelta(minutes=30))
    assert room_for_a_node(window, TUE, timedelta(minutes=10))
    assert not room_for_a_node(window, TUE - timedelta(minutes=1), timedelta(minutes=10))
    assert not room_for_a_node(None, TUE, timedelta(minutes=10))
