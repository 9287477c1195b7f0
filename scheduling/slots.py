"""Finding the slot for an update: the earliest window start that satisfies every rule.

A slot is [start, start + estimate) where `start` is the START of a window occurrence: never a moment
in the middle of a window that is already open, because "your update starts when your window opens" is
the one thing a customer can be told and plan around. Rules, all required:

* start ≥ now + notice, and start ≥ not_before when given;
* start + estimate ≤ the end of that same occurrence (occurrences of different windows are not joined);
* the slot overlaps no blackout (half-open: a slot may end exactly when a blackout starts);
* start < now + horizon;
* a cluster with an open P0/P1 case gets only urgent updates (`SlotBlocked` otherwise).

The window start is resolved by the DST rules of `scheduling.windows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from scheduling.blackouts import Blackout, overlapping
from scheduling.errors import NoSlot, SchedulingError, SlotBlocked
from scheduling.times import aware_utc, describe, fmt_instant, optional_aware_utc, require_int
from scheduling.windows import Interval, WeeklyWindow, window_occurrences

__all__ = ["NoSlot", "SlotBlocked", "estimate_duration", "find_slot", "remaining_fits"]


def find_slot(
    *,
    now: datetime,
    windows: Sequence[WeeklyWindow],
    blackouts: Sequence[Blackout],
    notice: timedelta,
    estimate: timedelta,
    blocked_by_case: bool = False,
    urgent: bool = False,
    not_before: datetime | None = None,
    horizon: timedelta = timedelta(days=120),
) -> Interval:
    """The earliest allowed slot (see the module docstring); `NoSlot` says why when there is none."""
    now_utc = aware_utc(now, "now")
    floor = optional_aware_utc(not_before, "not_before")
    _require_span(notice, "notice", allow_zero=True)
    _require_span(estimate, "estimate", allow_zero=False)
    _require_span(horizon, "horizon", allow_zero=False)
    windows, blackouts = list(windows), list(blackouts)
    for window in windows:
        if not isinstance(window, WeeklyWindow):
            raise SchedulingError(f"window {window!r} is not a WeeklyWindow")
    for blackout in blackouts:
        if not isinstance(blackout, Blackout):
            raise SchedulingError(f"blackout {blackout!r} is not a Blackout")

    if blocked_by_case and not urgent:
        raise SlotBlocked("cluster has an open P0/P1 case; only urgent updates may be scheduled")
    if not windows:
        raise NoSlot("no maintenance windows are defined for this cluster")
    longest = max(w.duration for w in windows)
    if estimate > longest:
        # Checked up front: it is the common failure and would otherwise scan the whole horizon.
        raise NoSlot(
            f"estimate {describe(estimate)} is longer than every maintenance window "
            f"(the longest is {describe(longest)})"
        )

    earliest = now_utc + notice if floor is None else max(now_utc + notice, floor)
    limit = now_utc + horizon
    span = f"between {fmt_instant(earliest)} and {fmt_instant(limit)}"
    if earliest >= limit:
        raise NoSlot(
            f"the earliest allowed start {fmt_instant(earliest)} is beyond the "
            f"{describe(horizon)} search horizon (ends {fmt_instant(limit)})"
        )

    fitting = 0
    first_blocker: Blackout | None = None
    for occurrence in window_occurrences(windows, earliest, limit):
        if occurrence.start < earliest or occurrence.duration < estimate:
            continue  # already open (we only start at window starts), or too short for the estimate
        fitting += 1
        slot = Interval(occurrence.start, occurrence.start + estimate)
        blocker = overlapping(slot, blackouts)
        if blocker is None:
            return slot
        first_blocker = first_blocker or blocker

    if fitting == 0:
        raise NoSlot(f"no window long enough for the estimate {describe(estimate)} starts {span}")
    assert first_blocker is not None  # every fitting start was refused, and only blackouts refuse
    raise NoSlot(
        f"all {fitting} window starts {span} that fit the estimate {describe(estimate)} overlap a blackout "
        f"(first: {first_blocker.describe()})"
    )


def estimate_duration(nodes: int, per_node: timedelta) -> timedelta:
    """How long a rolling update of `nodes` nodes takes when they are updated one at a time."""
    count = require_int(nodes, "node count", minimum=1)
    _require_span(per_node, "per-node estimate", allow_zero=False)
    return per_node * count


def remaining_fits(now: datetime, window_end: datetime, per_node: timedelta) -> bool:
    """The cutoff rule: start another node only if it can finish before the window closes."""
    _require_span(per_node, "per-node estimate", allow_zero=False)
    return aware_utc(now, "now") + per_node <= aware_utc(window_end, "window end")


def _require_span(value: object, what: str, *, allow_zero: bool) -> timedelta:
    if not isinstance(value, timedelta):
        raise SchedulingError(f"{what} {value!r} is not a timedelta")
    if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
        expected = "zero or more" if allow_zero else "more than zero"
        raise SchedulingError(f"{what} {describe(value)}: expected {expected}")
    return value
