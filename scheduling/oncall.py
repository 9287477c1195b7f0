"""Who is on call: the rotation rule and the escalation chain, pure (no I/O; `at` is always passed in).

A rotation hands over at a local wall-clock time in its own zone (`09:00 Europe/Berlin`), every day or
every week, starting on a given local date (for weekly: the hand-over weekday). DST never moves the
hand-over: it stays at 09:00 local, so a shift across a DST change is an hour shorter or longer. A
hand-over time that does not exist on a spring-forward day happens at the instant the clocks jump to;
an ambiguous one (fall back) at its first occurrence.

Escalation is one level at a time: level 0 pages the engineer on call and the team lead; each later
level adds the next person of the chain (support manager, then senior director). A P0 also informs
the people kept informed (the VP of customer success) from the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from scheduling.errors import SchedulingError

PERIODS = {"daily": 1, "weekly": 7}


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    notify: str = ""  # an Apprise URL that reaches this person (pager, chat), besides email
    role: str = ""

    @property
    def contacts(self) -> tuple[str, ...]:
        return (self.email, self.notify) if self.notify else (self.email,)


@dataclass(frozen=True)
class Shift:
    person: Person
    start: datetime  # aware UTC: the hand-over that began it
    end: datetime  # the next hand-over


@dataclass(frozen=True)
class Rotation:
    engineers: tuple[Person, ...]
    timezone: str
    handover: time
    rotation: str  # daily | weekly
    starts: date  # local date of the first hand-over
    team_lead: Person
    escalation: tuple[Person, ...]  # support manager, senior director, ...
    informed: tuple[Person, ...] = ()

    def __post_init__(self) -> None:
        if not self.engineers:
            raise SchedulingError("on-call rotation: no engineers")
        if self.rotation not in PERIODS:
            raise SchedulingError(f"on-call rotation {self.rotation!r}: expected daily or weekly")
        ZoneInfo(self.timezone)

    @property
    def period_days(self) -> int:
        return PERIODS[self.rotation]

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Rotation:
        """From the stored inventory spec (inventory/oncall.py)."""

        def person(data: dict[str, Any]) -> Person:
            return Person(data["name"], data["email"], data.get("notify", ""), data.get("role", ""))

        hour, minute = (int(part) for part in spec["handover"].split(":"))
        return cls(
            engineers=tuple(person(p) for p in spec["engineers"]),
            timezone=spec["timezone"],
            handover=time(hour, minute),
            rotation=spec["rotation"],
            starts=date.fromisoformat(spec["starts"]),
            team_lead=person(spec["team_lead"]),
            escalation=tuple(person(p) for p in spec.get("escalation", [])),
            informed=tuple(person(p) for p in spec.get("informed", [])),
        )


def handover_at(rotation: Rotation, day: date) -> datetime:
    """The instant (UTC) of the hand-over on local date `day` (whether or not one is due that day)."""
    zone = ZoneInfo(rotation.timezone)
    wall = datetime.combine(day, rotation.handover)
    instant = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the first of two, if ambiguous
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # A wall time in a DST gap: fold=0 reads it with the offset before the jump, which lands as far
    # past the jump as the wall time is into the gap (02:30 -> 03:30). The hand-over is at the jump:
    # the first instant whose wall time is past the hand-over, between the two readings of it.
    low = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())  # wall time not past it
    high = int(instant.timestamp())  # wall time past it
    while high - low > 1:  # zone transitions fall on whole seconds
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _shift_day(rotation: Rotation, at: datetime) -> date:
    """The local date of the latest daily hand-over instant at or before `at`."""
    if at.tzinfo is None:
        raise SchedulingError(f"on-call at {at!r}: a naive time; give a zone")
    day = at.astimezone(ZoneInfo(rotation.timezone)).date()
    for candidate in (day + timedelta(days=1), day, day - timedelta(days=1)):
        if handover_at(rotation, candidate) <= at:
            return candidate
    return day - timedelta(days=2)  # pragma: no cover - a zone offset change of more than a day


def shift(rotation: Rotation, at: datetime) -> Shift:
    """Who is on call at instant `at`, and the shift's hand-over instants."""
    day = _shift_day(rotation, at)
    period = rotation.period_days
    number = (day - rotation.starts).days // period  # floor: before `starts` counts backwards too
    first = rotation.starts + timedelta(days=number * period)
    person = rotation.engineers[number % len(rotation.engineers)]
    return Shift(person, handover_at(rotation, first), handover_at(rotation, first + timedelta(days=period)))


def on_call(rotation: Rotation, at: datetime) -> Person:
    return shift(rotation, at).person


def levels(rotation: Rotation) -> int:
    """How many escalation levels there are after the first page (one per person of the chain)."""
    return len(rotation.escalation)


def paged_at_level(rotation: Rotation, level: int, at: datetime) -> tuple[Person, ...]:
    """Who a page reaches at `level`: 0 the engineer on call and the team lead; n the chain's n-th."""
    if level == 0:
        engineer = on_call(rotation, at)
        return (engineer,) if engineer == rotation.team_lead else (engineer, rotation.team_lead)
    if 1 <= level <= len(rotation.escalation):
        return (rotation.escalation[level - 1],)
    raise SchedulingError(f"escalation level {level}: the chain has {len(rotation.escalation)} levels")
