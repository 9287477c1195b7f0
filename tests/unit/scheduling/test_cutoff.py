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


# --- Adversarial pass on #21: back-to-back windows across a DST change ---------------------------------

BERLIN_24H = WeeklyWindow(frozenset(range(7)), time(0, 0), timedelta(hours=24), "Europe/Berlin")


def test_an_always_open_window_stays_open_through_the_fall_back_night() -> None:
    """Daily 00:00 for 24 h is "always open". On 2026-10-25 (Berlin falls back at 03:00 CEST) that day's
    occurrence is 25 h of wall clock long; elapsed 24 h ended at 23:00 CET, an hour before the next
    occurrence, so a run at 22:30 CET stopped and was carried over to midnight in an always-open window."""
    at = datetime(2026, 10, 25, 21, 30, tzinfo=UTC)  # 22:30 CET
    window = open_window([BERLIN_24H], [], at)
    assert window is not None and window.end > datetime(2026, 10, 27, tzinfo=UTC)
    assert node_may_start(at + timedelta(minutes=25), window.end, timedelta(minutes=10))


def test_back_to_back_wall_clock_windows_stay_one_stretch_when_the_clocks_go_back() -> None:
    """01:00 for 2 h then 03:00 for 2 h (Berlin): back to back on the wall clock every night; the night
    the clocks go back, the first ends (elapsed) at the second 02:00 and the second opens an hour later."""
    first = WeeklyWindow(frozenset(range(7)), time(1, 0), timedelta(hours=2), "Europe/Berlin")
    second = WeeklyWindow(frozenset(range(7)), time(3, 0), timedelta(hours=2), "Europe/Berlin")
    window = open_window([first, second], [], datetime(2026, 10, 24, 23, 30, tzinfo=UTC))  # 01:30 CEST
    assert window == Interval(
        datetime(2026, 10, 24, 23, 0, tzinfo=UTC), datetime(2026, 10, 25, 4, 0, tzinfo=UTC)
    )
    # Not chained when they are not back to back: 01:00 for 1 h then 03:00 leaves a real gap.
    short = WeeklyWindow(frozenset(range(7)), time(1, 0), timedelta(hours=1), "Europe/Berlin")
    alone = open_window([short, second], [], datetime(2026, 10, 24, 23, 30, tzinfo=UTC))
    assert alone is not None and alone.end == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)
