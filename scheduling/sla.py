"""Support-case rules: priorities, routing, first-response deadlines, auto-close.

First response is due (see `first_response_due`):

* P0 (urgent) 1 hour, P1 (high) 2 hours, P2 (normal) 4 hours after opening, counted on the wall clock
  24/7: these are production-impacting and on-call answers them at night and on holidays.
* P3 (low) within ONE BUSINESS DAY on the business-hours clock: the clock runs only during business
  hours (default 09:00-17:00 local, Mon-Fri, minus holidays) and P3 gets one full business day of it
  (end - start, 8 hours by default). Opened Mon 08:00 → due Mon 17:00; opened Mon 15:00 → Tue 15:00;
  opened Fri 16:00 → Mon 16:00; opened Sat → Mon 17:00 (or Tue 17:00 if Monday is a holiday). This
  is how common help desks (business-hours SLA calendars) count "1 business day", it never gives
  less time for a case opened late in the day, and it never lands outside business hours.
  Business hours are local wall time in the calendar's zone, so they stay 09:00-17:00 across DST
  changes; a 09:00 or 17:00 that falls in a DST gap resolves like window starts (first valid instant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from scheduling.errors import SchedulingError
from scheduling.times import aware_utc, describe, load_zone, require_int, resolve_local


class Priority(StrEnum):
    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


class Category(StrEnum):
    ISSUE = "issue"
    FEATURE_REQUEST = "feature_request"


# Wall-clock (24/7) first-response targets; P3 uses the business-hours clock instead.
RESPONSE_TARGETS: dict[Priority, timedelta] = {
    Priority.P0: timedelta(hours=1),
    Priority.P1: timedelta(hours=2),
    Priority.P2: timedelta(hours=4),
}
_WORDS = {"urgent": Priority.P0, "high": Priority.P1, "normal": Priority.P2, "low": Priority.P3}
_PRIORITY = re.compile(r"p([0-3])")
_SEVERITY = re.compile(r"(?:sev(?:erity)?[\s_-]?)?([1-4])")
# The support handbook's role names.
_QUEUES = {
    Category.ISSUE: "Systems Reliability Engineer",
    Category.FEATURE_REQUEST: "Customer Success Representative",
}


def parse_priority(text: object) -> Priority:
    """ "P0".."P3", severity "1".."4" / "sev1".."sev4" (1 is most severe), or Urgent/High/Normal/Low."""
    if isinstance(text, Priority):
        return text
    if isinstance(text, str):
        key = text.strip().lower()
        if key in _WORDS:
            return _WORDS[key]
        if match := _PRIORITY.fullmatch(key):
            return Priority(f"P{match.group(1)}")
        if match := _SEVERITY.fullmatch(key):
            return Priority(f"P{int(match.group(1)) - 1}")
    raise SchedulingError(
        f"priority {text!r}: expected P0..P3, severity 1..4 (sev1..sev4) or Urgent, High, Normal, Low"
    )


def queue_for(category: Category | str) -> str:
    """Issues go to the Systems Reliability Engineers, feature requests to the Customer Success
    Representatives (the handbook's roles)."""
    try:
        return _QUEUES[Category(category)]
    except ValueError:
        raise SchedulingError(f"case category {category!r}: expected 'issue' or 'feature_request'") from None


@dataclass(frozen=True)
class BusinessCalendar:
    tz: str
    start: time = time(9)
    end: time = time(17)
    weekdays: frozenset[int] = field(default=frozenset(range(5)))
    holidays: frozenset[date] = field(default=frozenset())

    def __post_init__(self) -> None:
        load_zone(self.tz, "business calendar time zone")
        for what, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, time) or value.tzinfo is not None:
                raise SchedulingError(f"business hours {what} {value!r}: expected a time without tzinfo")
        if self.end <= self.start:
            raise SchedulingError(
                f"business hours end {self.end:%H:%M} is not after start {self.start:%H:%M}: "
                "overnight business hours are not supported"
            )
        for label, collection in (("business weekdays", self.weekdays), ("holidays", self.holidays)):
            if isinstance(collection, str) or not isinstance(collection, set | frozenset | list | tuple):
                raise SchedulingError(f"{label} {collection!r}: expected a set")
        days = frozenset(self.weekdays)
        if not days or any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6 for d in days):
            raise SchedulingError(f"business weekdays {self.weekdays!r}: expected a non-empty set of 0..6")
        object.__setattr__(self, "weekdays", days)
        holidays = frozenset(self.holidays)
        for day in holidays:
            if isinstance(day, datetime) or not isinstance(day, date):
                raise SchedulingError(f"holiday {day!r}: expected a date")
        object.__setattr__(self, "holidays", holidays)

    @property
    def day_length(self) -> timedelta:
        """Business hours per day as written (wall clock), e.g. 8 hours for 09:00-17:00."""
        return datetime.combine(date.min, self.end) - datetime.combine(date.min, self.start)

    def is_business_day(self, day: date) -> bool:
        return day.weekday() in self.weekdays and day not in self.holidays


def first_response_due(opened_at: datetime, priority: Priority | str, calendar: BusinessCalendar) -> datetime:
    """When the first response is due, in UTC (rules in the module docstring)."""
    opened = aware_utc(opened_at, "opened at")
    level = parse_priority(priority)
    if level in RESPONSE_TARGETS:
        return opened + RESPONSE_TARGETS[level]
    return _add_business_time(opened, calendar.day_length, calendar)


def _add_business_time(since: datetime, amount: timedelta, calendar: BusinessCalendar) -> datetime:
    zone = load_zone(calendar.tz)
    remaining = amount
    day = since.astimezone(zone).date()
    # Each week has at least one business day unless holidays cover it, so this bound is never hit
    # by a real calendar; it only stops a calendar whose holidays cover every weekday for years.
    for _ in range(7 * (len(calendar.holidays) + 2)):
        if calendar.is_business_day(day):
            opens = resolve_local(day, calendar.start, zone)
            closes = resolve_local(day, calendar.end, zone)
            begin = max(since, opens)
            if begin < closes:
                if remaining <= closes - begin:
                    return begin + remaining
                remaining -= closes - begin
        day += timedelta(days=1)
    raise SchedulingError(
        f"business calendar {calendar.tz}: no business hours found to fit {describe(amount)}"
    )


def auto_close_due(
    waiting_since: datetime,
    contact_attempts: int,
    now: datetime,
    wait: timedelta = timedelta(days=14),
    min_attempts: int = 2,
) -> bool:
    """A case waiting on the customer may be closed once it has waited `wait` (inclusive) AND we have
    tried to reach them at least `min_attempts` times; silence alone is not enough."""
    since = aware_utc(waiting_since, "waiting since")
    now_utc = aware_utc(now, "now")
    attempts = require_int(contact_attempts, "contact attempts", minimum=0)
    require_int(min_attempts, "min_attempts", minimum=0)
    if not isinstance(wait, timedelta) or wait <= timedelta(0):
        raise SchedulingError(f"auto-close wait {wait!r}: expected a positive timedelta")
    return now_utc - since >= wait and attempts >= min_attempts
