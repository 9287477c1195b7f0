"""The window cutoff: one rule for every run that has a window. Pure, `now` passed in.

A run that has a window (scheduled, `request --now` inside a window, resumed, taken over) records the
window occurrence it runs in: the whole occurrence, not a slot sized to the estimate, cut short where
a blackout begins. A node starts only if the time left in that window fits one node's estimate; a run
whose window was overridden (`--override-window --reason`, audited) has no cutoff, and neither has an
SRE's `upkeep update` (it runs now, outside any schedule).

* `open_window(windows, blackouts, at)`: the occurrence a run may use at `at` (None: no window open);
* `node_may_start(now, window_end, per_node)`: the cutoff itself;
* `room_for_a_node(window, now, per_node)`: an open window a run may start or resume in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from scheduling.blackouts import Blackout
from scheduling.errors import SchedulingError
from scheduling.times import aware_utc, load_zone
from scheduling.windows import Interval, WeeklyWindow, window_occurrences

__all__ = ["CHAIN", "node_may_start", "open_window", "room_for_a_node"]

CHAIN = timedelta(days=8)  # how far back-to-back windows are followed (one is at most 7 days long)


def open_window(
    windows: Sequence[WeeklyWindow], blackouts: Sequence[Blackout], at: datetime
) -> Interval | None:
    """The maintenance time open at `at`: the occurrence open then (start <= at < end; the longest if
    several are), extended by every occurrence that starts before it ends (back-to-back or overlapping
    windows are one stretch of maintenance time for a node in progress: "always open", 24 h every
    day, never closes at midnight, nor for the hour the clocks go back), at most `CHAIN` ahead; its
    end moved up to the start of the first blackout that begins inside it. None when no window is
    open at `at`, or `at` is in a blackout."""
    instant = aware_utc(at, "at")
    ahead = list(window_occurrences(windows, instant, instant + CHAIN))
    open_now = [occurrence for occurrence in ahead if occurrence.start <= instant < occurrence.end]
    if not open_now:
        return None
    first = max(open_now, key=lambda occurrence: occurrence.end)
    end, last_start = first.end, first.start
    zones = {load_zone(window.tz) for window in windows}
    for occurrence in ahead:  # chronological: each one that starts in the stretch extends it
        if occurrence.start <= end + _clocks_back(zones, last_start, end) and occurrence.end > end:
            end, last_start = occurrence.end, occurrence.start
    end = min(end, instant + CHAIN)
    for blackout in blackouts:
        if not isinstance(blackout, Blackout):
            raise SchedulingError(f"blackout {blackout!r} is not a Blackout")
        span = blackout.interval
        if span.start <= instant < span.end:
            return None
        if instant < span.start < end:
            end = span.start
    return Interval(first.start, end)


def _clocks_back(zones: set[ZoneInfo], start: datetime, end: datetime) -> timedelta:
    """How far the clocks went back between `start` and `end` in the windows' zones: a window's
    duration is elapsed time (scheduling/windows.py), so on the night they go back an occurrence ends
    that much earlier on the wall clock, and a window written back to back with it ("always open",
    01:00 for 2 h then 03:00) opens that much after it: still one stretch of maintenance time."""
    shifts = [
        (start.astimezone(zone).utcoffset() or timedelta(0))
        - (end.astimezone(zone).utcoffset() or timedelta(0))
        for zone in zones
    ]
    return max([timedelta(0), *shifts])


def node_may_start(now: datetime, window_end: datetime, per_node: timedelta) -> bool:
    """The cutoff rule: start another node only if it can finish before the window closes."""
    if not isinstance(per_node, timedelta) or per_node <= timedelta(0):
        raise SchedulingError(f"per-node estimate {per_node!r}: expected a timedelta of more than zero")
    return aware_utc(now, "now") + per_node <= aware_utc(window_end, "window end")


def room_for_a_node(window: Interval | None, now: datetime, per_node: timedelta) -> bool:
    """Whether a run may start (or resume) now in `window`: it is open and one node still fits."""
    return (
        window is not None
        and window.start <= aware_utc(now, "now")
        and node_may_start(now, window.end, per_node)
    )
