"""Hypothesis strategies for the scheduling rules. Every datetime generated here is time-zone aware."""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from scheduling.blackouts import Blackout
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

aware_datetimes = st.datetimes(
    min_value=datetime(2025, 1, 1),
    max_value=datetime(2028, 12, 31),
    timezones=st.sampled_from([ZoneInfo(name) for name in ZONES] + [UTC]),
)

# Wall times biased towards the small hours, where DST transitions happen.
wall_times = st.one_of(
    st.builds(time, st.integers(0, 3), st.sampled_from([0, 15, 30, 45])),
    st.builds(time, st.integers(0, 23), st.integers(0, 59)),
)

durations = st.one_of(
    st.integers(1, 12 * 60),  # the usual few hours
    st.integers(1, 7 * 24 * 60),  # up to the 7-day maximum
).map(lambda minutes: timedelta(minutes=minutes))

weekly_windows = st.builds(
    WeeklyWindow,
    weekdays=st.frozensets(st.integers(0, 6), min_size=1),
    start=wall_times,
    duration=durations,
    tz=zone_names,
)


@st.composite
def blackouts_near(draw: st.DrawFn, around: date) -> Blackout:
    start = around + timedelta(days=draw(st.integers(-10, 90)))
    end = start + timedelta(days=draw(st.integers(0, 20)))
    return Blackout(start, end, draw(zone_names), "freeze", draw(st.sampled_from(["customer", "vendor"])))
