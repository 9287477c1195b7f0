"""The shared DST resolution rule and message wording."""

from datetime import UTC, date, datetime, time, timedelta, timezone

import pendulum
import pytest

from scheduling.errors import SchedulingError
from scheduling.times import aware_utc, describe, fmt_instant, load_zone, resolve_local


@pytest.mark.parametrize(
    ("zone", "day", "wall", "expected_utc"),
    [
        # Spring-forward gap 02:00-03:00: 02:30 does not exist → the transition, 03:00 EDT.
        ("America/New_York", date(2026, 3, 8), time(2, 30), datetime(2026, 3, 8, 7, 0, tzinfo=UTC)),
        # Fall-back overlap 01:00-02:00 happens twice → first occurrence, 01:30 EDT (-04:00).
        ("America/New_York", date(2026, 11, 1), time(1, 30), datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
        ("Europe/Berlin", date(2026, 3, 29), time(2, 15), datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        ("Europe/Berlin", date(2026, 10, 25), time(2, 30), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        # Lord Howe shifts by 30 minutes: 02:00-02:30 is the gap, 01:30-02:00 is doubled.
        ("Australia/Lord_Howe", date(2026, 10, 4), time(2, 15), datetime(2026, 10, 3, 15, 30, tzinfo=UTC)),
        ("Australia/Lord_Howe", date(2026, 4, 5), time(1, 45), datetime(2026, 4, 4, 14, 45, tzinfo=UTC)),
        # Kolkata: no DST, +05:30 all year.
        ("Asia/Kolkata", date(2026, 3, 8), time(2, 30), datetime(2026, 3, 7, 21, 0, tzinfo=UTC)),
        ("Asia/Kolkata", date(2026, 11, 1), time(1, 30), datetime(2026, 10, 31, 20, 0, tzinfo=UTC)),
    ],
)
def test_resolve_local(zone: str, day: date, wall: time, expected_utc: datetime) -> None:
    assert resolve_local(day, wall, load_zone(zone)) == expected_utc


def test_fall_back_resolution_is_the_first_occurrence() -> None:
    zone = load_zone("America/New_York")
    local = resolve_local(date(2026, 11, 1), time(1, 30), zone).astimezone(zone)
    assert local.fold == 0
    assert local.utcoffset() == timedelta(hours=-4)


def test_aware_utc_normalises_pendulum_and_offsets() -> None:
    value = aware_utc(pendulum.datetime(2026, 6, 1, 12, tz="Europe/Berlin"), "now")
    assert type(value) is datetime
    assert value == datetime(2026, 6, 1, 10, tzinfo=UTC)
    assert value.tzinfo is UTC
    assert aware_utc(datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))), "x") == (
        datetime(2026, 1, 1, tzinfo=UTC)
    )


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(SchedulingError, match=r"now 2026-01-01T00:00:00 has no time zone"):
        aware_utc(datetime(2026, 1, 1), "now")
    with pytest.raises(SchedulingError, match="not a datetime"):
        aware_utc(date(2026, 1, 1), "now")


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "+05:30", "America", "../etc/passwd", "local", None, 5])
def test_bad_zones_are_refused(name: object) -> None:
    with pytest.raises(SchedulingError, match="is not an IANA zone"):
        load_zone(name)


def test_zone_error_message() -> None:
    with pytest.raises(SchedulingError, match=r"^time zone 'Mars/Olympus' is not an IANA zone"):
        load_zone("Mars/Olympus")


def test_wording() -> None:
    assert describe(timedelta(0)) == "0 minutes"
    assert describe(timedelta(days=9)) == "9 days"
    assert describe(timedelta(hours=2, minutes=30)) == "2 hours 30 minutes"
    assert describe(timedelta(minutes=1)) == "1 minute"
    assert fmt_instant(datetime(2026, 12, 20, 9, tzinfo=UTC)) == "2026-12-20 09:00 UTC"
