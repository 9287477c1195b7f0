"""How much advance notice customers get before an update, and when they are reminded.

Defaults follow the support policy: 72 hours for a product update, 7 days for a cloud release, and an
urgent update (security fix, data-loss bug) may go out with as little as 24 hours' notice. Urgency only
ever shortens notice: if a policy's normal notice is already shorter than `urgent_minimum`, the normal
notice applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from scheduling.errors import SchedulingError
from scheduling.times import aware_utc, describe


class UpdateKind(StrEnum):
    PRODUCT_UPDATE = "product_update"
    CLOUD_RELEASE = "cloud_release"


@dataclass(frozen=True)
class NoticePolicy:
    product_update: timedelta = timedelta(hours=72)
    cloud_release: timedelta = timedelta(days=7)
    urgent_minimum: timedelta = timedelta(hours=24)
    # Reminders go out this long before the slot starts.
    reminders: tuple[timedelta, ...] = field(default=(timedelta(hours=72), timedelta(hours=24)))

    def __post_init__(self) -> None:
        for name in ("product_update", "cloud_release", "urgent_minimum"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value < timedelta(0):
                raise SchedulingError(f"notice {name} {value!r}: expected a timedelta of zero or more")
        if not isinstance(self.reminders, tuple | list):
            raise SchedulingError(f"notice reminders {self.reminders!r}: expected a tuple of timedeltas")
        for value in self.reminders:
            if not isinstance(value, timedelta) or value <= timedelta(0):
                shown = describe(value) if isinstance(value, timedelta) else repr(value)
                raise SchedulingError(f"reminder {shown} before the slot: expected a positive timedelta")
        object.__setattr__(self, "reminders", tuple(self.reminders))


def parse_kind(kind: object) -> UpdateKind:
    if isinstance(kind, str) and kind in UpdateKind._value2member_map_:
        return UpdateKind(kind)
    choices = ", ".join(k.value for k in UpdateKind)
    raise SchedulingError(f"update kind {kind!r}: expected one of {choices}")


def minimum_notice(policy: NoticePolicy, kind: UpdateKind | str, urgent: bool) -> timedelta:
    """The least notice an update of `kind` needs; urgent updates need min(normal, urgent_minimum)."""
    normal = policy.cloud_release if parse_kind(kind) is UpdateKind.CLOUD_RELEASE else policy.product_update
    return min(normal, policy.urgent_minimum) if urgent else normal


def reminder_times(policy: NoticePolicy, slot_start: datetime, notice_sent_at: datetime) -> list[datetime]:
    """When to remind, oldest first: each `slot_start - reminder` strictly after the notice was sent
    (a reminder at the same moment as the notice is pointless) and strictly before the slot. A notice
    sent late, close to or after the slot, simply gets fewer (or no) reminders."""
    start = aware_utc(slot_start, "slot start")
    sent = aware_utc(notice_sent_at, "notice sent at")
    times = {start - before for before in policy.reminders}
    return sorted(t for t in times if sent < t < start)
