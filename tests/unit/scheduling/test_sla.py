"""Support-case rules: priorities, routing, first-response deadlines, auto-close."""

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling.errors import SchedulingError
from scheduling.sla import (
    BusinessCalendar,
    Category,
    Priority,
    auto_close_due,
    first_response_due,
    parse_priority,
    queue_for,
)
from scheduling.times import load_zone

from .strategies import ZONES, instants, weekday_sets

NY = load_zone("America/New_York")
BERLIN = load_zone("Europe/Berlin")


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P0", Priority.P0),
        ("p3", Priority.P3),
        (" 1 ", Priority.P0),
        ("4", Priority.P3),
        ("sev2", Priority.P1),
        ("SEV-3", Priority.P2),
        ("Severity 4", Priority.P3),
        ("Urgent", Priority.P0),
        ("high", Priority.P1),
        ("NORMAL", Priority.P2),
        ("Low", Priority.P3),
        (Priority.P2, Priority.P2),
    ],
)
def test_parse_priority(text: str, expected: Priority) -> None:
    assert parse_priority(text) is expected


@pytest.mark.parametrize("text", ["P4", "0", "5", "sev0", "critical", "", None, 1])
def test_bad_priority(text: object) -> None:
    with pytest.raises(SchedulingError, match=r"priority .*: expected P0..P3, severity 1..4"):
        parse_priority(text)


def test_queue_for() -> None:
    assert queue_for(Category.ISSUE) == "Systems Reliability Engineer"
    assert queue_for("feature_request") == "Customer Success Representative"
    with pytest.raises(
        SchedulingError, match="case category 'question': expected 'issue' or 'feature_request'"
    ):
        queue_for("question")


def test_wall_clock_targets_ignore_weekends_and_count_elapsed_time_across_dst() -> None:
    cal = BusinessCalendar("America/New_York")
    opened = ny(2026, 3, 8, 0, 30)  # Sunday, 90 minutes before clocks spring forward
    assert first_response_due(opened, "P0", cal) == utc(2026, 3, 8, 6, 30)
    assert first_response_due(opened, Priority.P1, cal) == utc(2026, 3, 8, 7, 30)
    due = first_response_due(opened, "P2", cal)
    assert due - opened == timedelta(hours=4)
    assert due.astimezone(NY).hour == 5  # 4 elapsed hours, but the wall clock moved 5


@pytest.mark.parametrize(
    ("opened", "due_local"),
    [
        (ny(2026, 6, 1, 8), datetime(2026, 6, 1, 17)),  # Mon before opening hours: that day's close
        (ny(2026, 6, 1, 9), datetime(2026, 6, 1, 17)),
        (ny(2026, 6, 1, 15), datetime(2026, 6, 2, 15)),  # 2 h Mon + 6 h Tue
        (ny(2026, 6, 1, 17), datetime(2026, 6, 2, 17)),  # at close: the clock starts Tue 09:00
        (ny(2026, 6, 5, 16), datetime(2026, 6, 8, 16)),  # Fri 1 h + Mon 7 h
        (ny(2026, 6, 6, 11), datetime(2026, 6, 8, 17)),  # Saturday
        (ny(2026, 3, 6, 16), datetime(2026, 3, 9, 16)),  # across spring-forward weekend
        (ny(2026, 10, 30, 16), datetime(2026, 11, 2, 16)),  # across fall-back weekend
    ],
)
def test_p3_is_one_business_day_on_the_business_clock(opened: datetime, due_local: datetime) -> None:
    due = first_response_due(opened, "low", BusinessCalendar("America/New_York"))
    assert due.tzinfo is UTC
    assert due.astimezone(NY).replace(tzinfo=None) == due_local


def test_p3_skips_holidays() -> None:
    cal = BusinessCalendar("America/New_York", holidays=frozenset({date(2026, 6, 8)}))
    assert first_response_due(ny(2026, 6, 6, 11), "P3", cal).astimezone(NY).replace(tzinfo=None) == datetime(
        2026, 6, 9, 17
    )
    berlin = BusinessCalendar(
        "Europe/Berlin", holidays=frozenset({date(2026, 12, 24), date(2026, 12, 25), date(2026, 12, 31)})
    )
    opened = datetime(2026, 12, 23, 16, tzinfo=BERLIN)  # 1 h Wed, holidays, weekend, 7 h Mon
    assert first_response_due(opened, "P3", berlin) == datetime(2026, 12, 28, 16, tzinfo=BERLIN)


def test_p3_custom_hours_and_zones() -> None:
    kolkata = BusinessCalendar("Asia/Kolkata", start=time(10), end=time(18, 30), weekdays=frozenset(range(6)))
    # Saturday is a business day here; 8.5 h per day.
    opened = datetime(2026, 3, 7, 17, tzinfo=load_zone("Asia/Kolkata"))
    assert first_response_due(opened, "P3", kolkata) == datetime(
        2026, 3, 9, 17, tzinfo=load_zone("Asia/Kolkata")
    )
    lord_howe = BusinessCalendar("Australia/Lord_Howe")
    lh = load_zone("Australia/Lord_Howe")
    # Fri 2026-10-02 16:00 LHST, clocks go forward 30 min on Sunday: 1 h Fri + 7 h Mon = Mon 16:00 LHDT.
    assert first_response_due(datetime(2026, 10, 2, 16, tzinfo=lh), "P3", lord_howe) == datetime(
        2026, 10, 5, 16, tzinfo=lh
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tz": "Mars/Olympus"}, "business calendar time zone 'Mars/Olympus' is not an IANA zone"),
        ({"start": time(17), "end": time(9)}, "business hours end 09:00 is not after start 17:00"),
        ({"weekdays": frozenset()}, "business weekdays"),
        ({"holidays": frozenset({datetime(2026, 12, 24)})}, "holiday .*: expected a date"),
    ],
)
def test_business_calendar_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SchedulingError, match=message):
        BusinessCalendar(**({"tz": "UTC"} | kwargs))  # type: ignore[arg-type]


def test_auto_close() -> None:
    since = utc(2026, 6, 1)
    assert auto_close_due(since, 2, since + timedelta(days=14))
    assert not auto_close_due(since, 2, since + timedelta(days=14) - timedelta(seconds=1))
    assert not auto_close_due(since, 1, since + timedelta(days=30))
    assert auto_close_due(since, 1, since + timedelta(days=3), wait=timedelta(days=3), min_attempts=1)
    with pytest.raises(SchedulingError, match="contact attempts -1: must be at least 0"):
        auto_close_due(since, -1, since)
    with pytest.raises(SchedulingError, match="has no time zone"):
        auto_close_due(datetime(2026, 6, 1), 2, since)


@st.composite
def calendars_and_openings(draw: st.DrawFn) -> tuple[BusinessCalendar, datetime]:
    opened = draw(instants)
    start = draw(st.integers(0, 20))
    end = draw(st.integers(start + 1, 24))
    # Holidays within three weeks of the opening, where they can actually move the deadline.
    first = opened.astimezone(UTC).date() - timedelta(days=1)
    holidays = frozenset(first + timedelta(days=n) for n in draw(st.lists(st.integers(0, 21), max_size=8)))
    calendar = BusinessCalendar(
        draw(st.sampled_from(ZONES)),
        start=time(start),
        end=time(end) if end < 24 else time(23, 59),
        weekdays=draw(weekday_sets),
        holidays=holidays,
    )
    return calendar, opened


@settings(deadline=None)
@given(case=calendars_and_openings(), later=st.integers(0, 3 * 24 * 60))
def test_p3_due_properties(case: tuple[BusinessCalendar, datetime], later: int) -> None:
    """P3 is due inside business hours of a business day, at least one business day's length after
    opening, and a case opened later is never due earlier."""
    cal, opened = case
    zone = load_zone(cal.tz)
    due = first_response_due(opened, "P3", cal)
    local = due.astimezone(zone)
    # The business clock counts elapsed time, so at least a full business day has passed.
    assert due - opened.astimezone(UTC) >= cal.day_length
    assert cal.is_business_day(local.date())
    # Read with fold=0, a wall time in a gap lands at or after the module's instant (the gap's end).
    opens = datetime.combine(local.date(), cal.start, tzinfo=zone).astimezone(UTC)
    closes = datetime.combine(local.date(), cal.end, tzinfo=zone).astimezone(UTC)
    assert opens - timedelta(hours=1) < due <= closes
    assert first_response_due(opened.astimezone(UTC) + timedelta(minutes=later), "P3", cal) >= due
