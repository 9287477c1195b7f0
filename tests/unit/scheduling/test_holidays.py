"""Customers' public holidays as blackout days (the `holidays` package), in the customer's zone."""

from datetime import UTC, date, datetime, time, timedelta

import pytest

from scheduling.errors import SchedulingError
from scheduling.holidays import check_region, holiday_blackouts, public_holidays
from scheduling.slots import find_slot
from scheduling.windows import Interval, WeeklyWindow


def test_bavaria_has_epiphany_and_berlin_does_not() -> None:
    assert date(2026, 1, 6) in public_holidays("DE", "BY", [2026])
    assert date(2026, 1, 6) not in public_holidays("DE", "BE", [2026])
    assert date(2026, 12, 25) in public_holidays("de", None, [2026])  # case-insensitive codes


def test_a_holiday_blocks_the_whole_local_day() -> None:
    [epiphany] = [
        b for b in holiday_blackouts("DE", "BY", "Europe/Berlin", [2026]) if b.start == date(2026, 1, 6)
    ]
    assert epiphany.interval == Interval(
        datetime(2026, 1, 5, 23, tzinfo=UTC), datetime(2026, 1, 6, 23, tzinfo=UTC)
    )
    assert epiphany.reason == "public holiday Epiphany (DE-BY)" and epiphany.scope == "customer"


def test_slot_search_skips_the_holiday() -> None:
    daily = WeeklyWindow(frozenset(range(7)), time(2), timedelta(hours=4), "Europe/Berlin")
    slot = find_slot(
        now=datetime(2026, 1, 5, 12, tzinfo=UTC),
        windows=[daily],
        blackouts=holiday_blackouts("DE", "BY", "Europe/Berlin", [2026]),
        notice=timedelta(0),
        estimate=timedelta(hours=1),
    )
    assert slot.start == datetime(2026, 1, 7, 1, tzinfo=UTC)  # Tue 6 Jan is Epiphany in Bavaria


@pytest.mark.parametrize(
    ("country", "subdivision", "message"),
    [
        ("XX", None, "holidays country 'XX' is not a country the holidays package knows"),
        ("DE", "ZZ", "holidays subdivision 'ZZ' is not one of DE's (BB, BE, BW, BY"),
        ("", None, "holidays country '': expected a country code"),
        (49, None, "holidays country 49: expected a country code"),
    ],
)
def test_unknown_regions_are_refused_naming_the_value(
    country: object, subdivision: object, message: str
) -> None:
    with pytest.raises(SchedulingError) as refused:
        check_region(country, subdivision)
    assert str(refused.value).startswith(message)
