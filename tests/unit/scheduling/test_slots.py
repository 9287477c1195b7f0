"""Slot finding: earliest window start that respects notice, blackouts, fit and open cases."""

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from scheduling.blackouts import Blackout
from scheduling.errors import SchedulingError
from scheduling.slots import NoSlot, SlotBlocked, estimate_duration, find_slot, remaining_fits
from scheduling.times import load_zone
from scheduling.windows import Interval, WeeklyWindow, window_occurrences

from .strategies import blackouts_near, instants, time_zones, transitions, weekday_sets, weekly_windows


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


BERLIN_TUE_THU = WeeklyWindow(frozenset({1, 3}), time(2), timedelta(hours=4), "Europe/Berlin")
NOW = utc(2026, 12, 1, 12)  # a Tuesday


def slot(**kwargs: object) -> Interval:
    args: dict[str, object] = {
        "now": NOW,
        "windows": [BERLIN_TUE_THU],
        "blackouts": [],
        "notice": timedelta(hours=72),
        "estimate": timedelta(hours=2),
    }
    return find_slot(**(args | kwargs))  # type: ignore[arg-type]


def test_earliest_window_start_after_notice() -> None:
    # Now + 72 h = Fri 12:00 UTC; the next window opens Tue 2026-12-08 02:00 CET = 01:00 UTC.
    assert slot() == Interval(utc(2026, 12, 8, 1), utc(2026, 12, 8, 3))


def test_open_window_is_not_joined_midway() -> None:
    # Earliest allowed is Thu 02:00 UTC, inside the Thu 01:00-05:00 UTC occurrence: skip to next Tue.
    got = slot(notice=timedelta(0), not_before=utc(2026, 12, 3, 2))
    assert got.start == utc(2026, 12, 8, 1)


def test_start_exactly_at_earliest_is_allowed() -> None:
    # Now + 37 h is exactly Thu 2026-12-03 02:00 CET (01:00 UTC), the opening of that window.
    assert slot(notice=timedelta(hours=37)).start == utc(2026, 12, 3, 1)


def test_blackout_pushes_slot_past_it() -> None:
    freeze = Blackout(date(2026, 12, 7), date(2026, 12, 27), "Europe/Berlin", "Christmas freeze")
    assert slot(blackouts=[freeze]).start == utc(2026, 12, 29, 1)


def test_slot_may_end_when_a_blackout_begins() -> None:
    w = WeeklyWindow(frozenset({0}), time(22), timedelta(hours=4), "UTC")  # Mon 22:00-02:00
    freeze = Blackout(date(2026, 12, 8), date(2026, 12, 8), "UTC")
    got = find_slot(
        now=NOW, windows=[w], blackouts=[freeze], notice=timedelta(0), estimate=timedelta(hours=2)
    )
    assert got == Interval(utc(2026, 12, 7, 22), utc(2026, 12, 8, 0))
    got = find_slot(
        now=NOW, windows=[w], blackouts=[freeze], notice=timedelta(0), estimate=timedelta(hours=3)
    )
    assert got.start == utc(2026, 12, 14, 22)


def test_not_before() -> None:
    assert slot(not_before=utc(2026, 12, 20)).start == utc(2026, 12, 22, 1)


def test_only_windows_long_enough_are_used() -> None:
    short = WeeklyWindow(frozenset({2, 4}), time(2), timedelta(hours=1), "UTC")  # Wed and Fri, 1 h
    # Wed 2026-12-02 02:00 UTC comes first but cannot hold 2 hours; Thu's Berlin window can.
    got = slot(windows=[short, BERLIN_TUE_THU], notice=timedelta(0))
    assert got.start == utc(2026, 12, 3, 1)
    # After Thu's opening only Friday's short window remains that week, so: next Tuesday.
    got = slot(windows=[short, BERLIN_TUE_THU], notice=timedelta(hours=40))
    assert got.start == utc(2026, 12, 8, 1)


def test_spring_forward_slot_starts_when_gap_ends() -> None:
    w = WeeklyWindow(frozenset({6}), time(2, 30), timedelta(hours=3), "America/New_York")
    got = find_slot(
        now=utc(2026, 3, 1), windows=[w], blackouts=[], notice=timedelta(days=6), estimate=timedelta(hours=1)
    )
    assert got.start == utc(2026, 3, 8, 7)  # 03:00 EDT


def test_fall_back_slot_is_first_occurrence() -> None:
    w = WeeklyWindow(frozenset({6}), time(1, 30), timedelta(hours=3), "America/New_York")
    got = find_slot(
        now=utc(2026, 10, 26),
        windows=[w],
        blackouts=[],
        notice=timedelta(days=3),
        estimate=timedelta(hours=1),
    )
    assert got.start == utc(2026, 11, 1, 5, 30)  # 01:30 EDT


def test_lord_howe_and_kolkata() -> None:
    lh = WeeklyWindow(frozenset({6}), time(2, 15), timedelta(hours=2), "Australia/Lord_Howe")
    got = find_slot(
        now=utc(2026, 9, 30), windows=[lh], blackouts=[], notice=timedelta(0), estimate=timedelta(hours=1)
    )
    assert got.start.astimezone(load_zone("Australia/Lord_Howe")).time() == time(2, 30)
    kol = WeeklyWindow(frozenset({6}), time(2, 30), timedelta(hours=2), "Asia/Kolkata")
    got = find_slot(
        now=utc(2026, 3, 1), windows=[kol], blackouts=[], notice=timedelta(0), estimate=timedelta(hours=1)
    )
    assert got.start == utc(2026, 3, 7, 21)


def test_open_case_blocks_non_urgent() -> None:
    with pytest.raises(
        SlotBlocked, match=r"^cluster has an open P0/P1 case; only urgent updates may be scheduled$"
    ):
        slot(blocked_by_case=True)
    assert slot(blocked_by_case=True, urgent=True).start == utc(2026, 12, 8, 1)


def test_no_slot_reasons() -> None:
    with pytest.raises(
        NoSlot, match=r"estimate 5 hours is longer than every maintenance window \(the longest is 4 hours\)"
    ):
        slot(estimate=timedelta(hours=5))
    with pytest.raises(NoSlot, match="no maintenance windows"):
        slot(windows=[])
    freeze = Blackout(date(2026, 12, 1), date(2027, 6, 30), "UTC", "platform migration", "vendor")
    with pytest.raises(NoSlot, match=r"overlap a blackout \(first: vendor blackout 2026-12-01..2027-06-30"):
        slot(blackouts=[freeze])
    with pytest.raises(NoSlot, match="beyond the 120 days search horizon"):
        slot(not_before=utc(2027, 6, 1))
    with pytest.raises(NoSlot, match="no window long enough for the estimate 2 hours starts between"):
        slot(horizon=timedelta(days=4))
    assert issubclass(NoSlot, SchedulingError) and issubclass(SlotBlocked, SchedulingError)


def test_bad_input() -> None:
    with pytest.raises(SchedulingError, match="estimate 0 minutes: expected more than zero"):
        slot(estimate=timedelta(0))
    with pytest.raises(SchedulingError, match="now 2026-12-01T00:00:00 has no time zone"):
        slot(now=datetime(2026, 12, 1))
    with pytest.raises(SchedulingError, match="notice -1 hour: expected zero or more"):
        slot(notice=timedelta(hours=-1))


def test_estimate_duration_and_cutoff() -> None:
    assert estimate_duration(5, timedelta(minutes=20)) == timedelta(hours=1, minutes=40)
    with pytest.raises(SchedulingError, match="node count 0: must be at least 1"):
        estimate_duration(0, timedelta(minutes=20))
    end = utc(2026, 12, 8, 5)
    assert remaining_fits(utc(2026, 12, 8, 4, 40), end, timedelta(minutes=20))
    assert not remaining_fits(utc(2026, 12, 8, 4, 41), end, timedelta(minutes=20))


def _is_gap(day: date, wall: time, zone_name: str) -> bool:
    zone = load_zone(zone_name)
    naive = datetime.combine(day, wall)
    return naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive


def _starts_as_window_would(start: datetime, w: WeeklyWindow) -> bool:
    """`start` is w's local start time on a matching day, or the end of the DST gap that swallowed it."""
    zone = load_zone(w.tz)
    local = start.astimezone(zone)
    if local.fold != 0 or local.weekday() not in w.weekdays:
        return False  # fold=1 would be the second of two ambiguous wall times
    if local.time() == w.start:
        if local.replace(fold=1).utcoffset() != local.utcoffset():
            event("slot starts at an ambiguous fall-back wall time (first occurrence)")
        return True
    before = (start - timedelta(microseconds=1)).astimezone(zone)
    at_gap_end = (
        _is_gap(local.date(), w.start, w.tz)
        and before.utcoffset() != local.utcoffset()
        # Compare whole wall datetimes: Santiago's gap starts at 24:00, i.e. on the previous date.
        and before.replace(tzinfo=None) < datetime.combine(local.date(), w.start) < local.replace(tzinfo=None)
    )
    if at_gap_end:
        event("slot starts at the end of a DST gap")
    return at_gap_end


def _check_slot(request: dict[str, object]) -> None:
    try:
        got = find_slot(**request)  # type: ignore[arg-type]
    except NoSlot as exc:
        event(f"NoSlot: {str(exc).split(' ')[0]}")  # shown by --hypothesis-show-statistics
        return
    event("slot found")
    now = request["now"]
    assert isinstance(now, datetime)
    windows: list[WeeklyWindow] = request["windows"]  # type: ignore[assignment]
    blackouts: list[Blackout] = request["blackouts"]  # type: ignore[assignment]
    estimate, notice = request["estimate"], request["notice"]
    assert isinstance(estimate, timedelta) and isinstance(notice, timedelta)
    not_before = request.get("not_before")
    earliest = now.astimezone(UTC) + notice  # in UTC: same-zone arithmetic would be wall-clock
    if isinstance(not_before, datetime):
        earliest = max(earliest, not_before.astimezone(UTC))

    assert got.start.tzinfo is UTC and got.end.tzinfo is UTC
    assert got.end - got.start == estimate
    assert got.start >= earliest
    assert got.start < now.astimezone(UTC) + timedelta(days=120)
    assert all(not b.interval.overlaps(got) for b in blackouts)
    assert any([_starts_as_window_would(got.start, w) and estimate <= w.duration for w in windows])
    assert any(
        o.start == got.start and got.end <= o.end for o in window_occurrences(windows, got.start, got.end)
    )
    # Earliest: every fitting window start between `earliest` and the slot hits a blackout.
    for o in window_occurrences(windows, earliest, got.start):
        if o.start >= earliest and o.duration >= estimate:
            candidate = Interval(o.start, o.start + estimate)
            assert any(b.interval.overlaps(candidate) for b in blackouts)


@st.composite
def slot_requests(draw: st.DrawFn) -> dict[str, object]:
    now = draw(instants)
    around = now.astimezone(UTC).date()
    return {
        "now": now,
        "windows": draw(st.lists(weekly_windows, min_size=1, max_size=3)),
        "blackouts": draw(st.lists(blackouts_near(around), max_size=4)),
        "notice": timedelta(minutes=draw(st.integers(0, 10 * 24 * 60) | st.integers(0, 60))),
        "estimate": timedelta(minutes=draw(st.integers(1, 10 * 60))),
        "not_before": draw(
            st.none() | st.integers(0, 30 * 24 * 60).map(lambda m: now + timedelta(minutes=m))
        ),
        "urgent": draw(st.booleans()),
    }


@st.composite
def requests_at_dst_changes(draw: st.DrawFn) -> dict[str, object]:
    """A window whose local start sits in or next to a DST gap/overlap, searched from shortly before."""
    change = draw(transitions)
    zone = load_zone(change.zone)
    # Wall time at the transition, read with the old offset: the start of the gap or of the overlap.
    wall = (change.at - timedelta(seconds=1)).astimezone(zone).replace(tzinfo=None) + timedelta(seconds=1)
    wall += timedelta(minutes=15 * draw(st.integers(-4, 8)))
    days = draw(st.just(frozenset[int]()) | weekday_sets) | {wall.weekday()}
    duration_minutes = draw(st.integers(1, 6 * 60))
    lead = draw(st.integers(0, 3 * 24 * 60) | st.integers(0, 6 * 60))
    now = (change.at - timedelta(minutes=lead)).astimezone(draw(time_zones))
    return {
        "now": now,
        "windows": [WeeklyWindow(days, wall.time(), timedelta(minutes=duration_minutes), change.zone)],
        "blackouts": draw(st.lists(blackouts_near(now.astimezone(UTC).date()), max_size=2)),
        "notice": timedelta(minutes=draw(st.integers(0, 120))),
        "estimate": timedelta(minutes=draw(st.integers(1, duration_minutes + 10))),
    }


@settings(deadline=None)
@given(request=slot_requests())
def test_slot_properties(request: dict[str, object]) -> None:
    """Any slot found starts at a window's (DST-resolved) local start, fits in that occurrence, avoids
    every blackout, respects notice and not_before, and is the earliest such start."""
    _check_slot(request)


@settings(deadline=None)
@given(request=requests_at_dst_changes())
def test_slot_properties_at_dst_changes(request: dict[str, object]) -> None:
    """The same properties where they are hardest: window starts inside or beside gaps and overlaps."""
    _check_slot(request)
