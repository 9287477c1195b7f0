"""Customers' public holidays (the `holidays` package): blackout days in the customer's zone, and days
off on the business-hours clock of SLA due times.

A region is an ISO 3166-1 country code and, optionally, one of its subdivisions as the package knows
them (DE + BY is Bavaria, US + CA is California). A holiday blocks the customer's whole local day, by
the same rule as any blackout (scheduling/blackouts.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from functools import lru_cache

import holidays as _holidays

from scheduling.blackouts import Blackout
from scheduling.errors import SchedulingError

__all__ = ["check_region", "holiday_blackouts", "public_holidays"]


def check_region(country: object, subdivision: object = None) -> tuple[str, str | None]:
    """(country, subdivision) when the `holidays` package knows them; else SchedulingError naming the
    value and, for a subdivision, the ones the country has."""
    if not isinstance(country, str) or not country.strip():
        raise SchedulingError(f"holidays country {country!r}: expected a country code such as 'DE'")
    if subdivision is not None and not isinstance(subdivision, str):
        raise SchedulingError(f"holidays subdivision {subdivision!r}: expected a code such as 'BY'")
    code, sub = country.strip().upper(), subdivision.strip().upper() if subdivision else None
    known = _holidays.list_supported_countries()
    if code not in known:
        raise SchedulingError(f"holidays country {country!r} is not a country the holidays package knows")
    if sub is not None and sub not in known[code]:
        choices = ", ".join(known[code][:12]) + (" ..." if len(known[code]) > 12 else "")
        raise SchedulingError(
            f"holidays subdivision {subdivision!r} is not one of {code}'s ({choices or 'it has none'})"
        )
    return code, sub


def public_holidays(country: str, subdivision: str | None, years: Iterable[int]) -> dict[date, str]:
    """Every public holiday of the region in `years`: date -> name."""
    return dict(_cached(*check_region(country, subdivision), tuple(sorted(set(years)))))


@lru_cache(maxsize=256)
def _cached(country: str, subdivision: str | None, years: tuple[int, ...]) -> tuple[tuple[date, str], ...]:
    found = _holidays.country_holidays(country, subdiv=subdivision, years=years)
    return tuple(sorted(found.items()))


def holiday_blackouts(country: str, subdivision: str | None, tz: str, years: Iterable[int]) -> list[Blackout]:
    """One customer blackout per public holiday, the whole local day in `tz`."""
    region = "-".join(filter(None, check_region(country, subdivision)))
    return [
        Blackout(day, day, tz, f"public holiday {name} ({region})", "customer")
        for day, name in public_holidays(country, subdivision, years).items()
    ]
