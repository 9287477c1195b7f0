"""Blackouts: inclusive local dates → a UTC interval."""

from datetime import UTC, date, datetime

import pytest

from scheduling.blackouts import Blackout, overlapping
from scheduling.errors import SchedulingError
from scheduling.times import load_zone
from scheduling.windows import Interval


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_inclusive_dates_in_local_zone() -> None:
    b = Blackout(date(2026, 12, 24), date(2026, 12, 26), "Europe/Berlin", "Christmas freeze")
    assert b.interval == Interval(utc(2026, 12, 23, 23), utc(2026, 12, 26, 23))


def test_single_day_across_dst_is_23_hours() -> None:
    b = Blackout(date(2026, 3, 8), date(2026, 3, 8), "America/New_York")
    assert b.interval == Interval(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))


def test_kolkata_and_lord_howe_offsets() -> None:
    assert Blackout(date(2026, 1, 1), date(2026, 1, 1), "Asia/Kolkata").interval.start == utc(
        2025, 12, 31, 18, 30
    )
    # Lord Howe summer time is +11:00.
    assert Blackout(date(2026, 1, 1), date(2026, 1, 1), "Australia/Lord_Howe").interval.start == utc(
        2025, 12, 31, 13
    )


def test_midnight_in_a_dst_gap_starts_when_the_gap_ends() -> None:
    # Santiago springs forward at 24:00 on 2026-09-05: 2026-09-06 00:00 does not exist, 01:00 does.
    b = Blackout(date(2026, 9, 6), date(2026, 9, 6), "America/Santiago")
    local = b.interval.start.astimezone(load_zone("America/Santiago"))
    assert local.replace(tzinfo=None) == datetime(2026, 9, 6, 1, 0)


def test_end_before_start_is_refused() -> None:
    with pytest.raises(SchedulingError, match=r"^blackout ends 2026-12-01 before it starts 2026-12-24$"):
        Blackout(date(2026, 12, 24), date(2026, 12, 1), "UTC")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": datetime(2026, 12, 24, 9)}, "expected a date"),
        ({"tz": "Mars/Olympus"}, "blackout time zone 'Mars/Olympus' is not an IANA zone"),
        ({"scope": "global"}, "blackout scope 'global': expected 'customer' or 'vendor'"),
    ],
)
def test_validation(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"start": date(2026, 12, 24), "end": date(2026, 12, 26), "tz": "UTC"}
    with pytest.raises(SchedulingError, match=message):
        Blackout(**(base | kwargs))  # type: ignore[arg-type]


def test_overlapping_returns_first_match_in_order() -> None:
    early = Blackout(date(2026, 12, 1), date(2026, 12, 31), "UTC", "December freeze", "vendor")
    late = Blackout(date(2026, 12, 24), date(2026, 12, 24), "UTC", "Christmas Eve")
    slot = Interval(utc(2026, 12, 24, 2), utc(2026, 12, 24, 4))
    assert overlapping(slot, [late, early]) is late
    assert overlapping(slot, [early, late]) is early
    assert overlapping(Interval(utc(2027, 1, 1), utc(2027, 1, 2)), [early, late]) is None


def test_slot_ending_exactly_at_blackout_start_does_not_overlap() -> None:
    b = Blackout(date(2026, 12, 24), date(2026, 12, 24), "UTC")
    assert overlapping(Interval(utc(2026, 12, 23, 22), utc(2026, 12, 24)), [b]) is None
    assert overlapping(Interval(utc(2026, 12, 25), utc(2026, 12, 25, 2)), [b]) is None
    assert overlapping(Interval(utc(2026, 12, 24, 23, 59), utc(2026, 12, 25, 2)), [b]) is b
