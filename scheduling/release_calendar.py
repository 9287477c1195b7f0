"""The monthly release calendar: an RFC 5545 RRULE read in a time zone, plus DST warnings.

The rule is one RRULE value ("FREQ=MONTHLY;BYDAY=2TU;BYHOUR=9;BYMINUTE=0;BYSECOND=0", an "RRULE:"
prefix is allowed) whose times are local wall time in `tz`. Parts the rule leaves out are taken from a
fixed anchor, 2000-01-01 00:00 local (a Saturday), so answers never depend on when they are asked: no
BYHOUR means 00:00, FREQ=WEEKLY without BYDAY means Saturdays, INTERVAL=2 counts from January 2000.
Releases repeat at most daily (FREQ=DAILY..YEARLY); DTSTART and multi-line rules are refused. UNTIL,
if given, is local time without a trailing "Z".

Local times resolve like window starts: a time in a DST gap moves to the first valid instant after
it, an ambiguous time takes the first occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from dateutil import rrule as _rrule

from scheduling.errors import SchedulingError
from scheduling.times import aware_utc, fmt_instant, load_zone, offset_changes, require_int, resolve_local

DEFAULT_RULE = "FREQ=MONTHLY;BYDAY=2TU;BYHOUR=9;BYMINUTE=0;BYSECOND=0"
_ANCHOR = datetime(2000, 1, 1)
_ALLOWED_FREQS = {_rrule.DAILY, _rrule.WEEKLY, _rrule.MONTHLY, _rrule.YEARLY}
MAX_OCCURRENCES = 1000
MAX_TRANSITION_SPAN = timedelta(days=366 * 100)


@dataclass(frozen=True)
class ReleaseCalendar:
    rrule: str = DEFAULT_RULE
    tz: str = "UTC"

    def __post_init__(self) -> None:
        load_zone(self.tz, "release calendar time zone")
        rule = self._rule  # parse now so a bad rule fails at construction, not at first use
        try:
            first = rule.after(_ANCHOR, inc=True)
        except Exception as exc:  # some bad rules (e.g. BYDAY=9TU) only fail when expanded
            raise SchedulingError(f"RRULE {self.rrule!r}: cannot be expanded ({exc})") from exc
        if first is None:
            raise SchedulingError(f"RRULE {self.rrule!r}: never produces a date (e.g. February 31)")

    @cached_property
    def _rule(self) -> Any:  # dateutil ships no type hints
        text = self.rrule
        if not isinstance(text, str):
            raise SchedulingError(f"RRULE {text!r}: expected a string such as {DEFAULT_RULE!r}")
        body = text.strip()
        if body.upper().startswith("RRULE:"):
            body = body[len("RRULE:") :]
        if not body or "\n" in body or "DTSTART" in body.upper():
            raise SchedulingError(f"RRULE {text!r}: expected a single RRULE value such as {DEFAULT_RULE!r}")
        try:
            rule = _rrule.rrulestr(body, dtstart=_ANCHOR)
        except Exception as exc:  # dateutil raises ValueError, IndexError, TypeError... for bad rules
            detail = str(exc)
            if "UNTIL" in detail:
                detail = "UNTIL must be local time without a trailing 'Z' (the rule is read in the zone)"
            raise SchedulingError(f"RRULE {text!r}: {detail}") from exc
        if not isinstance(rule, _rrule.rrule):
            raise SchedulingError(f"RRULE {text!r}: expected a single RRULE value such as {DEFAULT_RULE!r}")
        if rule._freq not in _ALLOWED_FREQS:
            raise SchedulingError(
                f"RRULE {text!r}: releases repeat at most daily "
                "(FREQ must be DAILY, WEEKLY, MONTHLY or YEARLY)"
            )
        return rule

    def next_occurrences(self, now: datetime, n: int) -> list[datetime]:
        """The next `n` releases strictly after `now`, as UTC instants (fewer if the rule ends)."""
        now_utc = aware_utc(now, "now")
        count = require_int(n, "occurrence count", minimum=0)
        if count > MAX_OCCURRENCES:
            raise SchedulingError(f"occurrence count {count}: must be at most {MAX_OCCURRENCES}")
        zone = load_zone(self.tz)
        # Start a day early in local time: resolving a gap time moves it forward, never back by a day.
        local = now_utc.astimezone(zone).replace(tzinfo=None) - timedelta(days=1)
        found: list[datetime] = []
        for occurrence in self._rule.xafter(max(local, _ANCHOR), inc=True):
            if len(found) == count:
                break
            instant = resolve_local(occurrence.date(), occurrence.time(), zone)
            if instant > now_utc:
                found.append(instant)
        return found


def dst_transitions(tz: str, since: datetime, until: datetime) -> list[tuple[datetime, timedelta]]:
    """UTC-offset changes of `tz` in [since, until): (instant in UTC, new offset - old offset).

    E.g. Europe/Berlin in 2026: (2026-03-29 01:00 UTC, +1 h) and (2026-10-25 01:00 UTC, -1 h);
    Australia/Lord_Howe shifts by 30 minutes. Changes of the standard offset are included too: any
    change moves local release and window times relative to UTC. At most 100 years per call.
    """
    zone = load_zone(tz)
    start, end = aware_utc(since, "since"), aware_utc(until, "until")
    if end < start:
        raise SchedulingError(f"until {fmt_instant(end)} is before since {fmt_instant(start)}")
    if end - start > MAX_TRANSITION_SPAN:
        raise SchedulingError(f"span {fmt_instant(start)} .. {fmt_instant(end)}: at most 100 years per call")
    return offset_changes(zone, start, end)
