"""Blackouts: whole days on which no update may run (customer freezes, vendor holidays).

Dates are inclusive and read in the blackout's own zone: 2026-12-24 .. 2026-12-26 Europe/Berlin blocks
[2026-12-24 00:00 Berlin, 2026-12-27 00:00 Berlin), which is 2026-12-23 23:00 .. 2026-12-26 23:00 UTC.
A local midnight that falls in a DST gap (zones that switch at 00:00) starts at the first valid instant
after the gap, the same rule as window starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cached_property
from typing import Literal

from scheduling.errors import SchedulingError
from scheduling.times import load_zone, resolve_local
from scheduling.windows import Interval

Scope = Literal["customer", "vendor"]
SCOPES: tuple[Scope, ...] = ("customer", "vendor")


@dataclass(frozen=True)
class Blackout:
    """No updates from local midnight on `start` through the end of local day `end` (inclusive)."""

    start: date
    end: date
    tz: str
    reason: str = ""
    scope: Scope = "customer"

    def __post_init__(self) -> None:
        for what, value in (("start", self.start), ("end", self.end)):
            # datetime is a date subclass; a time of day here would silently be dropped, so refuse it.
            if isinstance(value, datetime) or not isinstance(value, date):
                raise SchedulingError(f"blackout {what} {value!r}: expected a date (whole days, inclusive)")
        if self.end < self.start:
            raise SchedulingError(f"blackout ends {self.end} before it starts {self.start}")
        load_zone(self.tz, "blackout time zone")
        if not isinstance(self.reason, str):
            raise SchedulingError(f"blackout reason {self.reason!r}: expected a string")
        if self.scope not in SCOPES:
            raise SchedulingError(f"blackout scope {self.scope!r}: expected 'customer' or 'vendor'")

    @cached_property  # frozen, so computing once is safe; slot search asks many times
    def interval(self) -> Interval:
        """[start 00:00 local, (end + 1 day) 00:00 local) in UTC."""
        zone = load_zone(self.tz)
        return Interval(
            resolve_local(self.start, time(0), zone),
            resolve_local(self.end + timedelta(days=1), time(0), zone),
        )

    def describe(self) -> str:
        """'customer blackout 2026-12-24..2026-12-26 (Europe/Berlin): Christmas freeze'."""
        days = str(self.start) if self.start == self.end else f"{self.start}..{self.end}"
        why = f": {self.reason}" if self.reason else ""
        return f"{self.scope} blackout {days} ({self.tz}){why}"


def overlapping(interval: Interval, blackouts: Iterable[Blackout]) -> Blackout | None:
    """The first blackout, in the given order, that overlaps `interval`; None if none does."""
    if not isinstance(interval, Interval):
        raise SchedulingError(f"interval {interval!r} is not an Interval")
    for blackout in blackouts:
        if not isinstance(blackout, Blackout):
            raise SchedulingError(f"blackout {blackout!r} is not a Blackout")
        if blackout.interval.overlaps(interval):
            return blackout
    return None
