"""Weekly windows: validation, parsing, occurrences, and the DST rules."""

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling.errors import SchedulingError
from scheduling.times import load_zone
from scheduling.windows import Interval, WeeklyWindow, parse_days, parse_duration, window_occurrences

from .strategies import instants, weekly_windows


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def window(days: str, start: str, duration: str, tz: str) -> WeeklyWindow:
    return WeeklyWindow.parse({"days": days, "start": start, "duration": duration, "timezone": tz})


def test_parse_full_spec() -> None:
    w = WeeklyWindow.parse(
        {"days": ["tue", "thu"], "start": "02:00", "duration": "4h", "timezone": "Europe/Berlin"}
    )
    assert w == WeeklyWindow(frozenset({1, 3}), time(2), timedelta(hours=4), "Europe/Berlin")


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("sat,sun", {5, 6}),
        ("fri-mon", {4, 5, 6, 0}),
        (["Tuesday", "THU"], {1, 3}),
        ("sun", {6}),
    ],
)
def test_parse_days(days: object, expected: set[int]) -> None:
    assert parse_days(days) == frozenset(expected)


@pytest.mark.parametrize("days", ["", "funday", "mon-", [0, 1], 3, []])
def test_bad_days(days: object) -> None:
    with pytest.raises(SchedulingError, match="window day"):
        parse_days(days)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4h", timedelta(hours=4)), ("90m", timedelta(minutes=90)), ("2h30m", timedelta(hours=2, minutes=30))],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "4", "h", "2.5h", "30m2h", "-1h", "forever"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(SchedulingError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"duration": "0m"}, r"^window duration 0 minutes: must be between 1 minute and 7 days$"),
        ({"duration": "7d1m"}, r"window duration 7 days 1 minute: must be between 1 minute and 7 days"),
        ({"timezone": "Mars/Olympus"}, r"time zone 'Mars/Olympus' is not an IANA zone"),
        ({"start": "24:00"}, r"window start '24:00': expected 24-hour local time HH:MM"),
        ({"start": "2am"}, r"window start '2am'"),
        ({"days": "someday"}, r"window day 'someday'"),
        ({"tz": "UTC"}, r"unknown \['tz'\]"),
    ],
)
def test_parse_refuses_bad_values(spec: dict[str, str], message: str) -> None:
    base = {"days": "mon", "start": "02:00", "duration": "1h", "timezone": "UTC"}
    with pytest.raises(SchedulingError, match=message):
        WeeklyWindow.parse(base | spec)


def test_missing_key() -> None:
    with pytest.raises(SchedulingError, match=r"missing \['timezone'\]"):
        WeeklyWindow.parse({"days": "mon", "start": "02:00", "duration": "1h"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weekdays": frozenset()}, "non-empty"),
        ({"weekdays": frozenset({7})}, r"0 \(Mon\) .. 6 \(Sun\)"),
        ({"start": time(2, tzinfo=UTC)}, "local wall time"),
        ({"duration": timedelta(seconds=59)}, "must be between 1 minute and 7 days"),
        ({"tz": "Europe/Berlinn"}, "not an IANA zone"),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "weekdays": frozenset({0}),
        "start": time(2),
        "duration": timedelta(hours=1),
        "tz": "UTC",
    }
    with pytest.raises(SchedulingError, match=message):
        WeeklyWindow(**(base | kwargs))  # type: ignore[arg-type]


def test_interval_is_half_open_and_utc() -> None:
    berlin = load_zone("Europe/Berlin")
    a = Interval(datetime(2026, 6, 1, 2, tzinfo=berlin), datetime(2026, 6, 1, 4, tzinfo=berlin))
    assert a.start == utc(2026, 6, 1, 0) and a.start.tzinfo is UTC
    assert not a.overlaps(Interval(utc(2026, 6, 1, 2), utc(2026, 6, 1, 3)))  # touching only
    assert a.overlaps(Interval(utc(2026, 6, 1, 1, 59), utc(2026, 6, 1, 3)))
    with pytest.raises(SchedulingError, match="before or when it starts"):
        Interval(utc(2026, 6, 1, 2), utc(2026, 6, 1, 2))
    with pytest.raises(SchedulingError, match="has no time zone"):
        Interval(datetime(2026, 6, 1), utc(2026, 6, 2))


def test_occurrences_in_order_and_including_open_window() -> None:
    w = window("tue,thu", "02:00", "4h", "Europe/Berlin")
    # 2026-06-02 is a Tuesday; Berlin is +02:00 in summer, so the window is 00:00-04:00 UTC.
    got = list(window_occurrences([w], utc(2026, 6, 2, 1), utc(2026, 6, 5)))
    assert got == [
        Interval(utc(2026, 6, 2, 0), utc(2026, 6, 2, 4)),
        Interval(utc(2026, 6, 4, 0), utc(2026, 6, 4, 4)),
    ]


def test_occurrences_of_several_windows_are_merged_chronologically() -> None:
    berlin = window("mon-fri", "22:00", "2h", "Europe/Berlin")
    kolkata = window("mon-fri", "02:00", "90m", "Asia/Kolkata")
    got = list(window_occurrences([berlin, kolkata, berlin], utc(2026, 6, 1), utc(2026, 6, 3)))
    # Kolkata Mon 02:00 IST (Sun 20:30-22:00 UTC) ended before `since`; the duplicate Berlin is dropped.
    assert [i.start for i in got] == [
        utc(2026, 6, 1, 20),
        utc(2026, 6, 1, 20, 30),
        utc(2026, 6, 2, 20),
        utc(2026, 6, 2, 20, 30),
    ]


def test_spring_forward_gap_start_moves_to_end_of_gap() -> None:
    w = window("sun", "02:30", "2h", "America/New_York")
    (occ,) = window_occurrences([w], utc(2026, 3, 8), utc(2026, 3, 9))
    assert occ.start == utc(2026, 3, 8, 7)  # 03:00 EDT, the first valid instant
    assert occ.end == utc(2026, 3, 8, 9)  # elapsed duration: 05:00 EDT


def test_fall_back_start_takes_first_occurrence_and_duration_is_elapsed() -> None:
    w = window("sun", "01:30", "2h", "America/New_York")
    (occ,) = window_occurrences([w], utc(2026, 11, 1), utc(2026, 11, 2))
    assert occ.start == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    ny = load_zone("America/New_York")
    # Two elapsed hours across the fall-back end at 02:30 EST on the wall clock.
    assert occ.end.astimezone(ny).replace(tzinfo=None) == datetime(2026, 11, 1, 2, 30)


def test_berlin_window_spanning_spring_forward_keeps_elapsed_duration() -> None:
    w = window("sun", "01:00", "4h", "Europe/Berlin")
    (occ,) = window_occurrences([w], utc(2026, 3, 29), utc(2026, 3, 30))
    assert occ.start == utc(2026, 3, 29, 0)  # 01:00 CET
    assert occ.end.astimezone(load_zone("Europe/Berlin")).hour == 6  # 4 h later is 06:00 CEST


def test_lord_howe_half_hour_gap() -> None:
    w = window("sun", "02:15", "1h", "Australia/Lord_Howe")
    (occ,) = window_occurrences([w], utc(2026, 10, 3), utc(2026, 10, 4))
    lh = load_zone("Australia/Lord_Howe")
    assert occ.start.astimezone(lh).replace(tzinfo=None) == datetime(2026, 10, 4, 2, 30)
    assert occ.start == utc(2026, 10, 3, 15, 30)


def test_kolkata_half_hour_offset_without_dst() -> None:
    w = window("sun", "02:30", "1h", "Asia/Kolkata")
    starts = [o.start for o in window_occurrences([w], utc(2026, 3, 1), utc(2026, 11, 10))]
    assert len(starts) == 36
    assert {s.time() for s in starts} == {time(21, 0)}  # always 21:00 UTC the day before


def test_window_occurrences_refuses_naive_bounds() -> None:
    w = window("sun", "02:30", "1h", "UTC")
    with pytest.raises(SchedulingError, match="since 2026-01-01T00:00:00 has no time zone"):
        list(window_occurrences([w], datetime(2026, 1, 1), utc(2026, 2, 1)))


@settings(deadline=None)
@given(w=weekly_windows, since=instants, span_days=st.integers(0, 40))
def test_occurrences_property(w: WeeklyWindow, since: datetime, span_days: int) -> None:
    """Occurrences are complete, ordered, overlap the range, last exactly `duration`, and start at the
    window's local wall time (or, inside a DST gap, at the transition that ends the gap)."""
    until = since.astimezone(UTC) + timedelta(days=span_days)  # aware arithmetic in a zone drops fold
    zone = load_zone(w.tz)
    got = list(window_occurrences([w], since, until))
    assert got == sorted(got, key=lambda i: i.start)
    days: list[date] = []
    for occ in got:
        assert occ.duration == w.duration
        assert occ.start < until and occ.end > since
        local = occ.start.astimezone(zone)
        assert local.fold == 0  # never the second of two ambiguous wall times
        assert local.weekday() in w.weekdays
        days.append(local.date())
        if local.time() != w.start:
            naive = datetime.combine(local.date(), w.start)
            assert naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive
            before = (occ.start - timedelta(microseconds=1)).astimezone(zone)
            assert before.utcoffset() != local.utcoffset()  # it is the transition instant
            # Whole wall datetimes: Santiago's gap starts at 24:00, i.e. on the previous date.
            assert before.replace(tzinfo=None) < naive < local.replace(tzinfo=None)
    # No matching local date is skipped between the first and the last occurrence.
    if days:
        expected = [days[0] + timedelta(n) for n in range((days[-1] - days[0]).days + 1)]
        assert days == [d for d in expected if d.weekday() in w.weekdays]
