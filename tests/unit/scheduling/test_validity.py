"""The validity rule of a planned update: every reason it breaks, and where it goes instead."""

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling.blackouts import Blackout
from scheduling.errors import NoSlot
from scheduling.notice import NoticePolicy
from scheduling.validity import PlannedUpdate, World, invalid_reasons, replacement_slot
from scheduling.windows import Interval, WeeklyWindow

from .strategies import blackouts_near, instants, weekly_windows


def utc(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


BERLIN_TUE_THU = WeeklyWindow(frozenset({1, 3}), time(2), timedelta(hours=4), "Europe/Berlin")
NOW = utc(12, 1, 12)  # Tuesday
SLOT = Interval(utc(12, 8, 1), utc(12, 8, 3))  # Tue 8 Dec 02:00-04:00 Berlin
TOLD = utc(12, 1, 12)


def reasons(**world: object) -> list[str]:
    update = world.pop("update", PlannedUpdate(SLOT, told_at=TOLD))
    now = world.pop("now", NOW)
    w = World(**({"windows": [BERLIN_TUE_THU]} | world))  # type: ignore[arg-type]
    return [r.code for r in invalid_reasons(update, w, now)]  # type: ignore[arg-type]


def test_a_slot_in_its_window_with_notice_is_valid() -> None:
    assert reasons() == []


def test_window_removed_or_moved_or_too_short() -> None:
    assert reasons(windows=[]) == ["window"]
    moved = WeeklyWindow(frozenset({2}), time(2), timedelta(hours=4), "Europe/Berlin")
    assert reasons(windows=[moved]) == ["window"]
    short = WeeklyWindow(frozenset({1, 3}), time(2), timedelta(hours=1), "Europe/Berlin")
    w = World(windows=[short])
    (reason,) = invalid_reasons(PlannedUpdate(SLOT, told_at=TOLD), w, NOW)
    assert "no longer fits the 2 hours estimate" in reason.text


def test_touching_occurrences_form_one_stretch() -> None:
    always = WeeklyWindow(frozenset(range(7)), time(0), timedelta(hours=24), "UTC")
    across_midnight = Interval(utc(12, 8, 23), utc(12, 9, 2))
    assert reasons(windows=[always], update=PlannedUpdate(across_midnight, told_at=TOLD)) == []


def test_blackout_over_the_slot_is_named() -> None:
    freeze = Blackout(date(2026, 12, 8), date(2026, 12, 8), "Europe/Berlin", "quarter close")
    w = World(windows=[BERLIN_TUE_THU], blackouts=[freeze])
    (reason,) = invalid_reasons(PlannedUpdate(SLOT, told_at=TOLD), w, NOW)
    assert (reason.code, reason.text) == ("blackout", "slot now inside blackout 'quarter close'")


def test_blackout_ending_before_the_slot_in_its_own_zone_does_not_count() -> None:
    # 7 Dec in Berlin ends at 7 Dec 23:00 UTC, before the 8 Dec 01:00 UTC slot.
    assert reasons(blackouts=[Blackout(date(2026, 12, 7), date(2026, 12, 7), "Europe/Berlin")]) == []


def test_notice_counts_from_when_the_customer_was_told() -> None:
    late = PlannedUpdate(SLOT, told_at=SLOT.start - timedelta(hours=71))
    assert reasons(update=late) == ["notice"]
    assert reasons(update=PlannedUpdate(SLOT, told_at=SLOT.start - timedelta(hours=72))) == []
    # Never told: the earliest the customer can hear of it is now.
    assert reasons(update=PlannedUpdate(SLOT), now=SLOT.start - timedelta(hours=73)) == []
    assert reasons(update=PlannedUpdate(SLOT), now=SLOT.start - timedelta(hours=71)) == ["notice"]


def test_an_update_that_has_begun_is_past_its_notice_rule() -> None:
    """Carried over to its next window (or a stalled one resumed), the update began: the notice period
    is for its start. Counted from "never told" (an SRE's `request --now`), it moved the run days on."""
    assert reasons(update=PlannedUpdate(SLOT), now=SLOT.start - timedelta(hours=1)) == ["notice"]
    assert reasons(update=PlannedUpdate(SLOT, started=True), now=SLOT.start - timedelta(hours=1)) == []
    begun = PlannedUpdate(SLOT, told_at=SLOT.start - timedelta(hours=2), started=True)
    assert reasons(update=begun) == []


def test_urgent_needs_only_the_urgent_minimum() -> None:
    update = PlannedUpdate(SLOT, urgent=True, told_at=SLOT.start - timedelta(hours=30))
    assert reasons(update=update) == []
    assert reasons(update=PlannedUpdate(SLOT, told_at=SLOT.start - timedelta(hours=30))) == ["notice"]


def test_customer_notice_period_from_contract() -> None:
    ten_days = NoticePolicy(product_update=timedelta(days=10))
    assert reasons(notice=ten_days) == ["notice"]
    none = NoticePolicy(product_update=timedelta(0))  # no notice owed: due now, never told, still valid
    assert reasons(notice=none, update=PlannedUpdate(SLOT), now=SLOT.start + timedelta(minutes=1)) == []


def test_deadline_start_exactly_at_it_is_in_time() -> None:
    assert reasons(deadline=SLOT.start) == []
    assert reasons(deadline=SLOT.start - timedelta(seconds=1)) == ["deadline"]


def test_open_p1_case_blocks_unless_urgent() -> None:
    assert reasons(blocking_case="CASE-3 (P1)") == ["case"]
    assert reasons(blocking_case="CASE-3 (P1)", update=PlannedUpdate(SLOT, urgent=True, told_at=TOLD)) == []


def test_ring_gate_and_withdrawn_release() -> None:
    assert reasons(ring_ready_at=SLOT.start) == []
    assert reasons(ring_ready_at=SLOT.start + timedelta(minutes=1)) == ["ring"]
    assert reasons(withdrawn=True) == ["release"]


def test_every_reason_at_once_in_fixed_order() -> None:
    freeze = Blackout(date(2026, 12, 8), date(2026, 12, 8), "UTC", "freeze")
    got = reasons(
        windows=[],
        blackouts=[freeze],
        deadline=utc(12, 2),
        blocking_case="CASE-1 (P0)",
        ring_ready_at=utc(12, 20),
        withdrawn=True,
        update=PlannedUpdate(SLOT),
        now=SLOT.start,
    )
    assert got == ["window", "blackout", "notice", "deadline", "case", "ring", "release"]


def test_replacement_skips_the_blackout_with_full_notice_from_now() -> None:
    freeze = Blackout(date(2026, 12, 8), date(2026, 12, 10), "Europe/Berlin", "quarter close")
    world = World(windows=[BERLIN_TUE_THU], blackouts=[freeze])
    now = utc(12, 4, 12)  # Fri: 72 h from now is Mon 7 Dec 12:00
    new = replacement_slot(PlannedUpdate(SLOT, told_at=TOLD), world, now)
    assert new == Interval(utc(12, 15, 1), utc(12, 15, 3))
    assert invalid_reasons(PlannedUpdate(new, told_at=now), world, now) == []


def test_replacement_refuses_past_the_deadline_naming_it() -> None:
    freeze = Blackout(date(2026, 12, 8), date(2026, 12, 10), "Europe/Berlin", "quarter close")
    world = World(windows=[BERLIN_TUE_THU], blackouts=[freeze], deadline=utc(12, 12))
    with pytest.raises(NoSlot, match="after the release deadline 2026-12-12 00:00 UTC"):
        replacement_slot(PlannedUpdate(SLOT, told_at=TOLD), world, NOW)


def test_replacement_refuses_a_case_blocked_cluster() -> None:
    world = World(windows=[BERLIN_TUE_THU], blackouts=[], blocking_case="CASE-9 (P0)")
    with pytest.raises(NoSlot, match="CASE-9"):
        replacement_slot(PlannedUpdate(SLOT, told_at=TOLD), world, NOW)


@settings(deadline=None)
@given(
    window=weekly_windows,
    now=instants,
    hours=st.integers(1, 6),
    notice=st.integers(0, 240),
    urgent=st.booleans(),
    data=st.data(),
)
def test_a_replacement_slot_is_always_valid(
    window: WeeklyWindow, now: datetime, hours: int, notice: int, urgent: bool, data: st.DataObject
) -> None:
    """Whatever the windows, blackouts and notice, where an invalid update is moved breaks no rule
    (told now), and the rule never finds fault with the same slot the moment after."""
    blackouts = data.draw(st.lists(blackouts_near(now.date()), max_size=3))
    world = World(
        windows=[window],
        blackouts=blackouts,
        notice=NoticePolicy(product_update=timedelta(hours=notice)),
        deadline=data.draw(st.none() | st.just(now + timedelta(days=30))),
    )
    old = PlannedUpdate(Interval(now, now + timedelta(hours=hours)), urgent=urgent)
    try:
        new = replacement_slot(old, world, now)
    except NoSlot:
        return
    moved = PlannedUpdate(new, urgent=urgent, told_at=now)
    assert invalid_reasons(moved, world, now) == []
    assert invalid_reasons(moved, world, new.start) == []
