"""Notice periods and reminder times."""

from datetime import UTC, datetime, timedelta

import pytest

from scheduling.errors import SchedulingError
from scheduling.notice import NoticePolicy, UpdateKind, minimum_notice, reminder_times

SLOT = datetime(2026, 12, 10, 2, tzinfo=UTC)


def test_defaults() -> None:
    policy = NoticePolicy()
    assert minimum_notice(policy, UpdateKind.PRODUCT_UPDATE, urgent=False) == timedelta(hours=72)
    assert minimum_notice(policy, "cloud_release", urgent=False) == timedelta(days=7)
    assert minimum_notice(policy, UpdateKind.CLOUD_RELEASE, urgent=True) == timedelta(hours=24)
    assert minimum_notice(policy, UpdateKind.PRODUCT_UPDATE, urgent=True) == timedelta(hours=24)


def test_urgent_never_lengthens_notice() -> None:
    policy = NoticePolicy(product_update=timedelta(hours=12))
    assert minimum_notice(policy, UpdateKind.PRODUCT_UPDATE, urgent=True) == timedelta(hours=12)


def test_unknown_kind() -> None:
    with pytest.raises(
        SchedulingError, match="update kind 'hotfix': expected one of product_update, cloud_release"
    ):
        minimum_notice(NoticePolicy(), "hotfix", urgent=False)


def test_policy_validation() -> None:
    with pytest.raises(SchedulingError, match="product_update"):
        NoticePolicy(product_update=timedelta(hours=-1))
    with pytest.raises(SchedulingError, match="reminder 0 minutes before the slot"):
        NoticePolicy(reminders=(timedelta(0),))


def test_reminders_after_notice_and_before_slot() -> None:
    policy = NoticePolicy()
    sent = SLOT - timedelta(days=7)
    assert reminder_times(policy, SLOT, sent) == [SLOT - timedelta(hours=72), SLOT - timedelta(hours=24)]


def test_late_notice_gets_fewer_reminders() -> None:
    policy = NoticePolicy()
    # Sent exactly 72 h before: that reminder would coincide with the notice, so it is dropped.
    assert reminder_times(policy, SLOT, SLOT - timedelta(hours=72)) == [SLOT - timedelta(hours=24)]
    assert reminder_times(policy, SLOT, SLOT - timedelta(hours=24)) == []
    assert reminder_times(policy, SLOT, SLOT + timedelta(hours=1)) == []


def test_reminders_are_utc_and_deduplicated() -> None:
    policy = NoticePolicy(reminders=(timedelta(hours=24), timedelta(hours=24), timedelta(hours=1)))
    got = reminder_times(policy, SLOT, SLOT - timedelta(days=3))
    assert got == [SLOT - timedelta(hours=24), SLOT - timedelta(hours=1)]
    assert all(t.tzinfo is UTC for t in got)


def test_naive_slot_start_refused() -> None:
    with pytest.raises(SchedulingError, match=r"slot start .* has no time zone"):
        reminder_times(NoticePolicy(), datetime(2026, 12, 10), SLOT)
