"""Weekly maintenance windows and their concrete occurrences: pure rules, no I/O.

A `WeeklyWindow` is "on these weekdays, at this local wall time in this IANA zone, for this long", e.g.
Tue and Thu 02:00 Europe/Berlin for 4 hours. Its occurrences are concrete UTC `Interval`s.

DST rules (one rule everywhere, see `scheduling.times.resolve_local`):

* The start is local wall time, resolved in the window's zone on each matching local date.
* A start inside a spring-forward gap moves to the first valid instant after the gap, i.e. the
  transition itself: 02:30 America/New_York on 2026-03-08 → 03:00 EDT (07:00 UTC). Moving by the gap's
  length (03:30) would shorten a window that was meant to open at the earliest moment.
* An ambiguous fall-back start takes the FIRST occurrence (fold=0): 01:30 America/New_York on
  2026-11-01 → 01:30 EDT (05:30 UTC), not 01:30 EST.
* The duration is elapsed (absolute) time: a 4-hour window that spans a transition is still 4 hours
  long, so it ends one wall-clock hour "later" or "earlier" than on other days.

Occurrences of different windows are not merged: a slot must fit inside one occurrence.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from scheduling.errors import SchedulingError
from scheduling.times import aware_utc, describe, fmt_instant, load_zone, resolve_local

MIN_DURATION = timedelta(minutes=1)
MAX_DURATION = timedelta(days=7)

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# ASCII: \d alone also matches other scripts' digits ('٠٢:٠٠' passed as 02:00, '٤h' as 4h).
_START = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)", re.ASCII)
_DURATION = re.compile(r"(?:(\d{1,3})d)?(?:(\d{1,4})h)?(?:(\d{1,5})m)?", re.ASCII)
_SPEC_KEYS = frozenset({"days", "start", "duration", "timezone"})


@dataclass(frozen=True)
class Interval:
    """A half-open span of time [start, end), both normalised to UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        start, end = aware_utc(self.start, "interval start"), aware_utc(self.end, "interval end")
        if end <= start:
            raise SchedulingError(
                f"interval ends {fmt_instant(end)} before or when it starts {fmt_instant(start)}"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def overlaps(self, other: Interval) -> bool:
        # Half-open: [a, b) and [b, c) only touch, they do not overlap.
        return self.start < other.end and other.start < self.end

    def contains(self, other: Interval) -> bool:
        return self.start <= other.start and other.end <= self.end

    def __str__(self) -> str:
        return f"{fmt_instant(self.start)} – {fmt_instant(self.end)}"


@dataclass(frozen=True)
class WeeklyWindow:
    """Recurring window: `weekdays` (0=Mon..6=Sun) at local `start` in `tz`, lasting `duration`."""

    weekdays: frozenset[int]
    start: time
    duration: timedelta
    tz: str

    def __post_init__(self) -> None:
        days = self.weekdays
        if isinstance(days, str) or not isinstance(days, set | frozenset | list | tuple):
            raise SchedulingError(f"window weekdays {days!r}: expected a set of integers 0 (Mon) .. 6 (Sun)")
        bad = [d for d in days if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6]
        if bad or not days:
            raise SchedulingError(
                f"window weekdays {sorted(days, key=str)!r}: expected a non-empty set of 0 (Mon) .. 6 (Sun)"
            )
        object.__setattr__(self, "weekdays", frozenset(days))
        if not isinstance(self.start, time) or self.start.tzinfo is not None:
            raise SchedulingError(
                f"window start {self.start!r}: expected a datetime.time without tzinfo (local wall time)"
            )
        if not isinstance(self.duration, timedelta) or not MIN_DURATION <= self.duration <= MAX_DURATION:
            shown = describe(self.duration) if isinstance(self.duration, timedelta) else repr(self.duration)
            raise SchedulingError(f"window duration {shown}: must be between 1 minute and 7 days")
        load_zone(self.tz)

    @classmethod
    def parse(cls, spec: Mapping[str, object]) -> WeeklyWindow:
        """From config: {"days": ["tue","thu"] | "mon-fri", "start": "02:00", "duration": "2h30m",
        "timezone": "Europe/Berlin"}. Day names are English (mon or monday); numbers are refused
        because 0 means Sunday in cron but Monday here."""
        if not isinstance(spec, Mapping):
            raise SchedulingError(f"window spec {spec!r}: expected a mapping with keys {sorted(_SPEC_KEYS)}")
        unknown = sorted(set(spec) - _SPEC_KEYS, key=str)
        missing = sorted(_SPEC_KEYS - set(spec))
        if unknown or missing:
            problems = ([f"unknown {unknown}"] if unknown else []) + (
                [f"missing {missing}"] if missing else []
            )
            raise SchedulingError(f"window spec keys: {', '.join(problems)}; expected {sorted(_SPEC_KEYS)}")
        return cls(
            weekdays=parse_days(spec["days"]),
            start=parse_start(spec["start"]),
            duration=parse_duration(spec["duration"]),
            tz=_require_str(spec["timezone"], "window timezone"),
        )

    def occurrences(self, since: datetime, until: datetime) -> Iterator[Interval]:
        """Occurrences overlapping [since, until), oldest first (see `window_occurrences`)."""
        return window_occurrences([self], since, until)

    def __str__(self) -> str:
        days = ",".join(_DAY_NAMES[d] for d in sorted(self.weekdays))
        return f"{days} {self.start:%H:%M} {self.tz} for {describe(self.duration)}"


def window_occurrences(
    windows: Sequence[WeeklyWindow], since: datetime, until: datetime
) -> Iterator[Interval]:
    """Every occurrence of `windows` overlapping [since, until), in chronological order.

    An occurrence that began before `since` but is still open is included. Ties sort by end; an
    occurrence shared by two identical windows is yielded once.
    """
    since_utc, until_utc = aware_utc(since, "since"), aware_utc(until, "until")
    if until_utc < since_utc:
        raise SchedulingError(f"until {fmt_instant(until_utc)} is before since {fmt_instant(since_utc)}")
    for window in windows:
        if not isinstance(window, WeeklyWindow):
            raise SchedulingError(f"window {window!r} is not a WeeklyWindow")
    streams = [_one_window(w, since_utc, until_utc) for w in windows]
    previous: Interval | None = None
    for interval in heapq.merge(*streams, key=lambda i: (i.start, i.end)):
        if interval != previous:
            yield interval
        previous = interval


def _one_window(window: WeeklyWindow, since: datetime, until: datetime) -> Iterator[Interval]:
    zone = load_zone(window.tz)
    # Start 8 local days back: a window lasts at most 7 days, so anything older has ended by `since`.
    day = since.astimezone(zone).date() - timedelta(days=8)
    last = until.astimezone(zone).date() + timedelta(days=1)
    while day <= last:
        if day.weekday() in window.weekdays:
            start = resolve_local(day, window.start, zone)
            if start >= until:
                return
            end = start + window.duration
            if end > since:
                yield Interval(start, end)
        day += timedelta(days=1)


def parse_days(value: object) -> frozenset[int]:
    """ "mon-fri", "sat,sun", ["tue", "thu"], "fri-mon" (wraps over the weekend) → weekday numbers."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, list | tuple):
        items = [_require_str(part, "window day").strip() for part in value]
    else:
        raise SchedulingError(f"window days {value!r}: expected e.g. 'mon-fri' or ['tue', 'thu']")
    days: set[int] = set()
    for item in items:
        first, sep, last = item.partition("-")
        a = _day_number(first)
        if not sep:
            days.add(a)
            continue
        b = _day_number(last)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    if not days:
        raise SchedulingError(f"window days {value!r}: expected at least one day")
    return frozenset(days)


def _day_number(name: str) -> int:
    key = name.strip().lower()
    for names in (_DAY_NAMES, _FULL_NAMES):
        if key in names:
            return names.index(key)
    raise SchedulingError(f"window day {name!r}: expected a weekday name such as 'mon' or 'tuesday'")


def parse_start(value: object) -> time:
    """ "02:00" → 02:00: a window's local start time, 24-hour HH:MM."""
    text = _require_str(value, "window start").strip()
    match = _START.fullmatch(text)
    if match is None:
        raise SchedulingError(f"window start {text!r}: expected 24-hour local time HH:MM, e.g. '02:00'")
    return time(int(match.group(1)), int(match.group(2)))


def parse_duration(value: object) -> timedelta:
    """ "4h", "90m", "2h30m", "1d" → timedelta (range checks are the caller's)."""
    text = _require_str(value, "duration").strip().lower().replace(" ", "")
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise SchedulingError(f"duration {value!r}: expected e.g. '4h', '90m', '2h30m' or '1d'")
    days, hours, minutes = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SchedulingError(f"{what} {value!r}: expected a string")
    return value
