"""Release calendar RRULEs and DST transition listing."""

from datetime import UTC, datetime, timedelta

import pytest

from scheduling.errors import SchedulingError
from scheduling.release_calendar import ReleaseCalendar, dst_transitions
from scheduling.times import load_zone


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_default_is_second_tuesday_09_utc() -> None:
    got = ReleaseCalendar().next_occurrences(utc(2026, 11, 23), 3)
    assert got == [utc(2026, 12, 8, 9), utc(2027, 1, 12, 9), utc(2027, 2, 9, 9)]
    assert all(t.tzinfo is UTC for t in got)


def test_next_is_strictly_after_now() -> None:
    assert ReleaseCalendar().next_occurrences(utc(2026, 12, 8, 9), 1) == [utc(2027, 1, 12, 9)]
    assert ReleaseCalendar().next_occurrences(utc(2026, 12, 8, 8, 59), 1) == [utc(2026, 12, 8, 9)]


def test_local_time_follows_dst() -> None:
    cal = ReleaseCalendar("RRULE:FREQ=MONTHLY;BYDAY=2TU;BYHOUR=9;BYMINUTE=0", "Europe/Berlin")
    winter, summer = cal.next_occurrences(utc(2026, 2, 1), 4)[0], cal.next_occurrences(utc(2026, 6, 1), 1)[0]
    assert winter == utc(2026, 2, 10, 8)
    assert summer == utc(2026, 6, 9, 7)


def test_release_in_gap_and_overlap() -> None:
    ny = ReleaseCalendar("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", "America/New_York")
    assert ny.next_occurrences(utc(2026, 3, 7, 12), 2) == [utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)]
    ny = ReleaseCalendar("FREQ=DAILY;BYHOUR=1;BYMINUTE=30", "America/New_York")
    assert ny.next_occurrences(utc(2026, 10, 31, 12), 2) == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_zoned_now_and_rule_end() -> None:
    kolkata = load_zone("Asia/Kolkata")
    cal = ReleaseCalendar("FREQ=WEEKLY;BYDAY=MO;BYHOUR=10;COUNT=3", "Asia/Kolkata")
    assert cal.next_occurrences(datetime(2000, 1, 1, tzinfo=kolkata), 5) == [
        utc(2000, 1, 3, 4, 30),
        utc(2000, 1, 10, 4, 30),
        utc(2000, 1, 17, 4, 30),
    ]
    assert cal.next_occurrences(utc(2026, 1, 1), 5) == []
    assert ReleaseCalendar().next_occurrences(utc(2026, 1, 1), 0) == []


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("FREQ=SOMETIMES", r"^RRULE 'FREQ=SOMETIMES': invalid 'FREQ': SOMETIMES"),
        ("FREQ=HOURLY", r"RRULE 'FREQ=HOURLY': releases repeat at most daily"),
        ("FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=31", "never produces a date"),
        ("FREQ=MONTHLY;BYDAY=9TU", "cannot be expanded"),
        ("FREQ=DAILY;UNTIL=20270101T000000Z", "UNTIL must be local time"),
        ("DTSTART:20260101T000000\nRRULE:FREQ=DAILY", "expected a single RRULE value"),
        ("", "expected a single RRULE value"),
        ("garbage", "RRULE 'garbage'"),
    ],
)
def test_malformed_rules(rule: str, message: str) -> None:
    with pytest.raises(SchedulingError, match=message):
        ReleaseCalendar(rule)


def test_bad_zone_and_count() -> None:
    with pytest.raises(
        SchedulingError, match="release calendar time zone 'Mars/Olympus' is not an IANA zone"
    ):
        ReleaseCalendar(tz="Mars/Olympus")
    with pytest.raises(SchedulingError, match="occurrence count -1"):
        ReleaseCalendar().next_occurrences(utc(2026, 1, 1), -1)
    with pytest.raises(SchedulingError, match="has no time zone"):
        ReleaseCalendar().next_occurrences(datetime(2026, 1, 1), 1)


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        (
            "Europe/Berlin",
            [(utc(2026, 3, 29, 1), timedelta(hours=1)), (utc(2026, 10, 25, 1), timedelta(hours=-1))],
        ),
        (
            "America/New_York",
            [(utc(2026, 3, 8, 7), timedelta(hours=1)), (utc(2026, 11, 1, 6), timedelta(hours=-1))],
        ),
        (
            "Australia/Lord_Howe",
            [
                (utc(2026, 4, 4, 15), timedelta(minutes=-30)),
                (utc(2026, 10, 3, 15, 30), timedelta(minutes=30)),
            ],
        ),
        ("Asia/Kolkata", []),
        ("UTC", []),
    ],
)
def test_dst_transitions(tz: str, expected: list[tuple[datetime, timedelta]]) -> None:
    assert dst_transitions(tz, utc(2026, 1, 1), utc(2027, 1, 1)) == expected


def test_dst_transitions_bounds_are_half_open() -> None:
    at = utc(2026, 3, 29, 1)
    assert dst_transitions("Europe/Berlin", at, utc(2026, 4, 1)) == [(at, timedelta(hours=1))]
    assert dst_transitions("Europe/Berlin", utc(2026, 3, 1), at) == []
    with pytest.raises(SchedulingError, match="is before since"):
        dst_transitions("Europe/Berlin", at, utc(2026, 3, 1))
