"""Is a planned update still valid, and if not, why: the one rule every re-check asks.

An update is announced days before it runs; in those days windows change, blackouts (and customer
holidays) are added, a release gets a deadline, a P0/P1 case opens. `invalid_reasons` looks at the
update's announced slot against the world as it is at `now` and returns every rule it breaks, in a
fixed order (an empty list means valid):

* ``window``:   every moment of the slot lies inside the cluster's maintenance windows (occurrences
  that touch or overlap count as one open stretch, so a slot across midnight of an always-open
  window is inside), i.e. the window still exists and the estimate still fits it;
* ``blackout``: no blackout (customer freeze, customer public holiday, vendor freeze) overlaps it;
* ``notice``:   the customer's notice period is met, counted from when the customer was actually told
  of the update (a notice delivered, not merely queued); never told yet counts from `now`, since
  the earliest the customer can still hear of it is now. Not for an update that has already begun
  (`started`: carried over to its next window, or a stalled one resumed): the notice period is for
  the start, which is behind it, and counted from "never told" (an SRE's `upkeep request --now`) it
  moved a carried-over run days on with a 'rescheduled' as the customer's first word (adv50);
* ``deadline``: the slot does not start after the release deadline (the same rule as deferrals: a
  start exactly at the deadline is in time);
* ``case``:     no open P0/P1 case on the cluster, unless the update is urgent;
* ``ring``:     a cloud-release slot does not start before the previous ring's last slot ends plus its
  soak (the caller works out that moment, `World.ring_ready_at`);
* ``release``:  the release is still offered (not withdrawn from the file server's index).

`replacement_slot` finds where an invalid update goes: the earliest slot that breaks none of these,
with the full notice period counted from `now` (the customer hears of the move now). Pure: no I/O,
`now` is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from scheduling.blackouts import Blackout
from scheduling.errors import NoSlot, SchedulingError
from scheduling.notice import NoticePolicy, UpdateKind, minimum_notice
from scheduling.slots import find_slot
from scheduling.times import aware_utc, describe, fmt_instant, optional_aware_utc
from scheduling.windows import Interval, WeeklyWindow, window_occurrences

__all__ = [
    "CODES",
    "PlannedUpdate",
    "Reason",
    "World",
    "invalid_reasons",
    "replacement_slot",
]

Code = Literal["window", "blackout", "notice", "deadline", "case", "ring", "release"]
CODES: tuple[Code, ...] = ("window", "blackout", "notice", "deadline", "case", "ring", "release")


@dataclass(frozen=True)
class Reason:
    """One broken rule: `code` for programs, `text` for people ("slot now inside blackout ...")."""

    code: Code
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class PlannedUpdate:
    """What was announced: the slot, what kind of update, whether urgent, and when the customer was
    actually told of it (the first notice delivered; None while none has been)."""

    slot: Interval
    kind: UpdateKind | str = UpdateKind.PRODUCT_UPDATE
    urgent: bool = False
    told_at: datetime | None = None
    started: bool = False  # it began once (carried over or resumed): past its notice rule

    def __post_init__(self) -> None:
        if not isinstance(self.slot, Interval):
            raise SchedulingError(f"slot {self.slot!r} is not an Interval")
        object.__setattr__(self, "told_at", optional_aware_utc(self.told_at, "told at"))


@dataclass(frozen=True)
class World:
    """Everything the rule needs to know about the world at the moment it is asked."""

    windows: Sequence[WeeklyWindow]
    blackouts: Sequence[Blackout] = ()
    notice: NoticePolicy = field(default_factory=NoticePolicy)
    deadline: datetime | None = None
    blocking_case: str | None = None  # e.g. "CASE-12 (P1)": an open P0/P1 case on the cluster
    ring_ready_at: datetime | None = None  # earliest start the ring gate allows (None: no gate)
    ring_note: str = ""  # e.g. "ring broad waits for ring canary (last slot ends ...) plus 24 hours soak"
    withdrawn: bool = False

    def __post_init__(self) -> None:
        for window in self.windows:
            if not isinstance(window, WeeklyWindow):
                raise SchedulingError(f"window {window!r} is not a WeeklyWindow")
        for blackout in self.blackouts:
            if not isinstance(blackout, Blackout):
                raise SchedulingError(f"blackout {blackout!r} is not a Blackout")
        object.__setattr__(self, "deadline", optional_aware_utc(self.deadline, "deadline"))
        object.__setattr__(self, "ring_ready_at", optional_aware_utc(self.ring_ready_at, "ring ready at"))


def invalid_reasons(update: PlannedUpdate, world: World, now: datetime) -> list[Reason]:
    """Every rule the update's slot breaks at `now`, in the order of the module docstring; [] = valid."""
    now_utc = aware_utc(now, "now")
    slot = update.slot
    reasons: list[Reason] = []
    if not _inside_windows(slot, world.windows):
        reasons.append(Reason("window", _window_text(slot, world.windows)))
    for blackout in world.blackouts:
        if blackout.interval.overlaps(slot):
            name = blackout.reason or blackout.describe()
            reasons.append(Reason("blackout", f"slot now inside blackout '{name}'"))
            break
    needed = minimum_notice(world.notice, update.kind, update.urgent)
    told = update.told_at if update.told_at is not None else now_utc
    if (
        needed > timedelta(0) and not update.started and slot.start - told < needed
    ):  # a 0 h contract needs no telling first
        when = "never told yet" if update.told_at is None else f"told {fmt_instant(told)}"
        reasons.append(
            Reason(
                "notice",
                f"notice too short: {describe(max(slot.start - told, timedelta(0)))} before the slot "
                f"({when}), the customer's notice period is {describe(needed)}",
            )
        )
    if world.deadline is not None and slot.start > world.deadline:
        reasons.append(Reason("deadline", f"slot is past the release deadline {fmt_instant(world.deadline)}"))
    if world.blocking_case and not update.urgent:
        reasons.append(Reason("case", f"case {world.blocking_case} is open on the cluster"))
    if world.ring_ready_at is not None and slot.start < world.ring_ready_at:
        note = world.ring_note or f"the previous ring and its soak end {fmt_instant(world.ring_ready_at)}"
        reasons.append(Reason("ring", f"slot is before the ring gate: {note}"))
    if world.withdrawn:
        reasons.append(Reason("release", "the release was withdrawn"))
    return reasons


def replacement_slot(update: PlannedUpdate, world: World, now: datetime) -> Interval:
    """The earliest slot (same length) valid under `world` with the full notice period counted from
    `now`; NoSlot names why there is none (after the deadline, blocked by a case, withdrawn ...)."""
    now_utc = aware_utc(now, "now")
    if world.withdrawn:
        raise NoSlot("the release was withdrawn")
    if world.blocking_case and not update.urgent:
        raise NoSlot(f"case {world.blocking_case} is open on the cluster; only an urgent update may run")
    # An update that has begun is past its notice rule (`invalid_reasons`): moved off a slot a blackout,
    # window or case now forbids, it goes on in its first valid window, as a carry-over does
    # (flows/schedule.py `next_window`), not days on behind a notice period counted from now (adv51).
    notice = timedelta(0) if update.started else minimum_notice(world.notice, update.kind, update.urgent)
    slot = find_slot(
        now=now_utc,
        windows=world.windows,
        blackouts=world.blackouts,
        notice=notice,
        estimate=update.slot.duration,
        urgent=update.urgent,
        not_before=world.ring_ready_at,
    )
    if world.deadline is not None and slot.start > world.deadline:
        raise NoSlot(
            f"the earliest slot with {describe(notice)} notice starts {fmt_instant(slot.start)}, "
            f"after the release deadline {fmt_instant(world.deadline)}"
        )
    return slot


def _merged(windows: Sequence[WeeklyWindow], since: datetime, until: datetime) -> list[Interval]:
    merged: list[Interval] = []
    for occurrence in window_occurrences(windows, since, until):
        if merged and occurrence.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = Interval(last.start, max(last.end, occurrence.end))
        else:
            merged.append(occurrence)
    return merged


def _inside_windows(slot: Interval, windows: Sequence[WeeklyWindow]) -> bool:
    return any(stretch.contains(slot) for stretch in _merged(windows, slot.start, slot.end))


def _window_text(slot: Interval, windows: Sequence[WeeklyWindow]) -> str:
    if not windows:
        return "the cluster has no maintenance window any more"
    if any(o.overlaps(slot) for o in window_occurrences(windows, slot.start, slot.end)):
        return f"the maintenance window no longer fits the {describe(slot.duration)} estimate"
    return "slot is no longer inside a maintenance window"
