"""The on-call rotation rule, as properties over hand-over times, DST changes and time zones."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduling.errors import SchedulingError
from scheduling.oncall import Person, Rotation, handover_at, on_call, paged_at_level, shift
from tests.unit.scheduling.strategies import ZONES, instants, time_zones

ENGINEERS = tuple(Person(f"eng{i}", f"eng{i}@vendor.example") for i in range(5))
LEAD = Person("lead", "lead@vendor.example")
CHAIN = (Person("manager", "m@vendor.example"), Person("director", "d@vendor.example"))

# Hand-over times biased to the small hours, where DST changes happen (02:30 falls in a gap or twice).
handovers = st.sampled_from([time(2, 30), time(0, 0), time(3, 0), time(1, 30)]) | st.builds(
    time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45])
)
rotations = st.builds(
    lambda n, zone, at, kind, starts: Rotation(
        engineers=ENGINEERS[:n],
        timezone=zone,
        handover=at,
        rotation=kind,
        starts=starts,
        team_lead=LEAD,
        escalation=CHAIN,
    ),
    st.integers(1, 5),
    st.sampled_from(ZONES),
    handovers,
    st.sampled_from(["daily", "weekly"]),
    st.dates(date(2024, 6, 1), date(2028, 6, 1)),
)


@given(rotations, instants)
def test_exactly_one_shift_holds_any_instant_and_it_contains_it(rotation: Rotation, at: datetime) -> None:
    current = shift(rotation, at)
    assert current.start <= at < current.end
    assert current.person in rotation.engineers


@given(rotations, instants, time_zones)
def test_who_is_on_call_depends_on_the_instant_not_the_zone_it_is_written_in(
    rotation: Rotation, at: datetime, zone: ZoneInfo
) -> None:
    assert on_call(rotation, at) == on_call(rotation, at.astimezone(zone))


@given(rotations, instants)
def test_the_hand_over_passes_to_the_next_engineer_exactly_at_the_local_hand_over(
    rotation: Rotation, at: datetime
) -> None:
    current = shift(rotation, at)
    before = shift(rotation, current.start - timedelta(microseconds=1))
    assert before.end == current.start  # shifts tile time: no gap, no overlap
    engineers = rotation.engineers
    assert engineers.index(current.person) == (engineers.index(before.person) + 1) % len(engineers)
    local = current.start.astimezone(ZoneInfo(rotation.timezone))
    # At the local hand-over time - unless that wall time does not exist that day (a DST gap), when
    # it is the instant the clocks jumped to.
    wall = datetime.combine(local.date(), rotation.handover)
    if local.replace(tzinfo=None) != wall:  # the clocks jumped over the hand-over at exactly this instant
        just_before = (current.start - timedelta(microseconds=1)).astimezone(ZoneInfo(rotation.timezone))
        assert just_before.replace(tzinfo=None) < wall < local.replace(tzinfo=None)
    if rotation.rotation == "weekly":
        assert local.date().weekday() == rotation.starts.weekday()


@given(rotations, instants)
def test_every_engineer_gets_the_same_number_of_hand_overs_per_cycle(
    rotation: Rotation, at: datetime
) -> None:
    counts = {p: 0 for p in rotation.engineers}
    current = shift(rotation, at)
    for _ in range(len(rotation.engineers) * 2):
        counts[current.person] += 1
        current = shift(rotation, current.end)
    assert set(counts.values()) == {2}


def test_a_shift_across_the_dst_change_keeps_the_local_hand_over_time() -> None:
    rotation = Rotation(ENGINEERS[:2], "Europe/Berlin", time(9, 0), "daily", date(2026, 3, 1), LEAD, CHAIN)
    sunday = shift(rotation, datetime(2026, 3, 29, 12, 0, tzinfo=UTC))  # clocks went forward at 02:00
    assert sunday.start == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)  # 09:00 CEST
    assert shift(rotation, datetime(2026, 3, 28, 12, 0, tzinfo=UTC)).start == datetime(
        2026, 3, 28, 8, 0, tzinfo=UTC
    )  # 09:00 CET the day before: a 23-hour shift
    assert sunday.end - sunday.start == timedelta(hours=24)


def test_a_hand_over_in_the_dst_gap_happens_when_the_clocks_jump() -> None:
    """02:30 does not exist in Berlin on 2026-03-29 (02:00 CET jumps to 03:00 CEST = 01:00 UTC): the
    hand-over is at the jump, as documented, not at 03:30 CEST half an hour into the new day."""
    rotation = Rotation(ENGINEERS[:2], "Europe/Berlin", time(2, 30), "daily", date(2026, 3, 1), LEAD, CHAIN)
    jump = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert handover_at(rotation, date(2026, 3, 29)) == jump
    assert shift(rotation, jump).start == jump
    assert shift(rotation, jump - timedelta(seconds=1)).end == jump
    assert on_call(rotation, jump) != on_call(rotation, jump - timedelta(seconds=1))


def test_escalation_goes_one_level_at_a_time_and_ends() -> None:
    rotation = Rotation(ENGINEERS[:2], "UTC", time(9, 0), "weekly", date(2026, 11, 30), LEAD, CHAIN)
    at = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    assert paged_at_level(rotation, 0, at) == (ENGINEERS[0], LEAD)
    assert paged_at_level(rotation, 1, at) == (CHAIN[0],)
    assert paged_at_level(rotation, 2, at) == (CHAIN[1],)
    with pytest.raises(SchedulingError, match="2 levels"):
        paged_at_level(rotation, 3, at)
    assert on_call(rotation, datetime(2026, 12, 7, 9, 0, tzinfo=UTC)) == ENGINEERS[1]
    assert on_call(rotation, datetime(2026, 12, 7, 8, 59, tzinfo=UTC)) == ENGINEERS[0]
