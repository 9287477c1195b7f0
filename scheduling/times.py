"""Time values for the scheduling rules: validation, DST-aware local-time resolution, wording.

Local wall time → instant (`resolve_local`) follows one rule everywhere in this package:

* a wall time that does not exist (inside a spring-forward gap) moves to the first valid instant after
  the gap, i.e. the transition instant itself (02:30 America/New_York on 2026-03-08 → 03:00 EDT);
* a wall time that exists twice (fall-back overlap) means the FIRST occurrence (fold=0), e.g. 01:30 EDT
  on 2026-11-01, never 01:30 EST.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import pendulum

from scheduling.errors import SchedulingError

_ONE_SECOND = timedelta(seconds=1)


def aware_utc(value: object, what: str) -> datetime:
    """`value` as a stdlib UTC datetime; naive datetimes and non-datetimes are refused."""
    if not isinstance(value, datetime):
        raise SchedulingError(f"{what} {value!r} is not a datetime: expected a time-zone-aware datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise SchedulingError(
            f"{what} {value.isoformat()} has no time zone: expected an aware datetime (e.g. tzinfo=UTC)"
        )
    # pendulum.DateTime.astimezone returns a pendulum object; rebuild a plain datetime so every value
    # leaving this package has the same type and tzinfo.
    u = value.astimezone(UTC)
    return datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond, tzinfo=UTC)


def optional_aware_utc(value: object, what: str) -> datetime | None:
    return None if value is None else aware_utc(value, what)


def require_timedelta(value: object, what: str) -> timedelta:
    if not isinstance(value, timedelta):
        raise SchedulingError(f"{what} {value!r} is not a timedelta")
    return value


def require_int(value: object, what: str, minimum: int = 0) -> int:
    # bool is an int subclass; True as a count is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchedulingError(f"{what} {value!r} is not a whole number")
    if value < minimum:
        raise SchedulingError(f"{what} {value}: must be at least {minimum}")
    return value


def load_zone(name: object, what: str = "time zone") -> ZoneInfo:
    """The IANA zone called `name` (e.g. "Europe/Berlin"); anything else raises SchedulingError."""
    if not isinstance(name, str):
        raise SchedulingError(f"{what} {name!r} is not an IANA zone name (e.g. 'Europe/Berlin')")
    return _load_zone(name, what)


@lru_cache(maxsize=512)
def _load_zone(name: str, what: str) -> ZoneInfo:
    try:
        zone = pendulum.timezone(name)
    except (ValueError, OSError, LookupError) as exc:  # InvalidTimezone is a ValueError; dirs are OSError
        raise SchedulingError(f"{what} {name!r} is not an IANA zone (e.g. 'Europe/Berlin')") from exc
    if not isinstance(zone, ZoneInfo):  # pendulum returns FixedTimezone for offsets; refuse those
        raise SchedulingError(f"{what} {name!r} is not an IANA zone (e.g. 'Europe/Berlin')")
    return zone


def resolve_local(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall time `wall` on `day` in `zone`, by the gap/overlap rule in the docstring."""
    naive = datetime.combine(day, wall.replace(tzinfo=None, fold=0))
    first = naive.replace(tzinfo=zone, fold=0)  # fold=0: the first of two ambiguous occurrences
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None, fold=0) == naive:
        return instant
    # In a gap: fold=0 reads the wall time with the pre-transition offset and fold=1 with the
    # post-transition one, so the transition lies between the two readings. Bisect for it.
    later = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = min(instant, later), max(instant, later)
    return _transition_between(lo, hi, zone)


def _transition_between(lo: datetime, hi: datetime, zone: ZoneInfo) -> datetime:
    """The instant in (lo, hi] where the UTC offset changes, assuming exactly one change there."""
    # Transitions fall on whole seconds, so bisect over integer POSIX seconds.
    before = lo.astimezone(zone).utcoffset()
    low, high = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            low = mid
        else:
            high = mid
    return datetime.fromtimestamp(high, UTC)


def offset_changes(zone: ZoneInfo, since: datetime, until: datetime) -> list[tuple[datetime, timedelta]]:
    """Every UTC-offset change in [since, until): (instant in UTC, new offset - old offset)."""
    # Real zones never change offset twice within 6 hours, so a 6-hour scan misses nothing.
    step = timedelta(hours=6)
    found: list[tuple[datetime, timedelta]] = []
    here = since - _ONE_SECOND
    offset = here.astimezone(zone).utcoffset()
    while here < until:
        nxt = min(here + step, until)
        nxt_offset = nxt.astimezone(zone).utcoffset()
        if nxt_offset != offset:
            at = _transition_between(here, nxt, zone)
            assert offset is not None and nxt_offset is not None  # zoneinfo always has an offset
            if since <= at < until:
                found.append((at, nxt_offset - offset))
        here, offset = nxt, nxt_offset
    return found


def fmt_instant(value: datetime) -> str:
    """'2026-12-20 09:00 UTC': how instants appear in messages."""
    u = value.astimezone(UTC)
    return u.strftime("%Y-%m-%d %H:%M:%S UTC" if u.second or u.microsecond else "%Y-%m-%d %H:%M UTC")


def describe(span: timedelta) -> str:
    """'2 hours 30 minutes', '9 days', '0 minutes': a timedelta in words for messages."""
    if span < timedelta(0):
        return "-" + describe(-span)
    minutes, seconds = divmod(int(span.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [
        f"{n} {unit}{'' if n == 1 else 's'}"
        for n, unit in ((days, "day"), (hours, "hour"), (minutes, "minute"), (seconds, "second"))
        if n
    ]
    return " ".join(parts) if parts else "0 minutes"
