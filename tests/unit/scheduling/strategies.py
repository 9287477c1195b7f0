"""Hypothesis strategies for the scheduling rules. Every datetime generated here is time-zone aware."""

from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from scheduling.blackouts import Blackout
from scheduling.release_calendar import dst_transitions
from scheduling.windows import WeeklyWindow

# New York/Berlin: 1-hour DST; Lord Howe: 30-minute DST; Kolkata: no DST at +05:30;
# Santiago: DST changes at local midnight (so a blackout's 00:00 can fall in a gap).
ZONES = (
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "UTC",
)

zone_names = st.sampled_from(ZONES)

time_zones = st.sampled_from([ZoneInfo(name) for name in ZONES] + [UTC])

# An instant in 2025-2028 (to the second) shown in one of the zones. Built with astimezone, so it is
# always aware and real (never inside a gap), with fold set for the second of two ambiguous times;
# much cheaper to draw than st.datetimes(timezones=...), which keeps 1000-example runs fast.
_BASE = datetime(2025, 1, 1, tzinfo=UTC)
aware_datetimes = st.builds(
    lambda seconds, zone: (_BASE + timedelta(seconds=seconds)).astimezone(zone),
    st.integers(0, 4 * 365 * 86400),
    time_zones,
)


class Change(NamedTuple):
    zone: str
    at: datetime  # UTC instant of a DST (or other UTC-offset) change


_CHANGES = [
    Change(name, at)
    for name in ZONES
    for at, _ in dst_transitions(name, datetime(2025, 1, 1, tzinfo=UTC), datetime(2029, 1, 1, tzinfo=UTC))
]
transitions = st.sampled_from(_CHANGES)

# Instants shortly before a DST change, so searches from them cross gaps and overlaps often.
before_transitions = st.builds(
    lambda change, minutes, zone: (change.at - timedelta(minutes=minutes)).astimezone(zone),
    transitions,
    st.integers(0, 8 * 24 * 60) | st.integers(0, 6 * 60),
    time_zones,
)
instants = st.one_of(aware_datetimes, before_transitions)

# Wall times biased towards the small hours, where DST transitions happen.
wall_times = st.one_of(
    st.builds(time, st.integers(0, 3), st.sampled_from([0, 15, 30, 45])),
    st.builds(time, st.integers(0, 23), st.integers(0, 59)),
)

durations = st.one_of(
    st.integers(1, 12 * 60),  # the usual few hours
    st.integers(1, 7 * 24 * 60),  # up to the 7-day maximum
).map(lambda minutes: timedelta(minutes=minutes))

# A 7-bit mask is far cheaper to draw than st.frozensets and shrinks just as well.
weekday_sets = st.integers(1, 127).map(lambda mask: frozenset(d for d in range(7) if mask >> d & 1))

weekly_windows = st.builds(
    WeeklyWindow,
    weekdays=weekday_sets,
    start=wall_times,
    duration=durations,
    tz=zone_names,
)


@st.composite
def blackouts_near(draw: st.DrawFn, around: date) -> Blackout:
    start = around + timedelta(days=draw(st.integers(-10, 90)))
    end = start + timedelta(days=draw(st.integers(0, 20)))
    return Blackout(start, end, draw(zone_names), "freeze", draw(st.sampled_from(["customer", "vendor"])))
