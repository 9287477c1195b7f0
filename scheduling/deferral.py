"""Customer deferrals of a scheduled update: how often, how far, and never past the release deadline.

Checks run in a fixed order and the first failure is the reason given: the deferral count, then that
the new time is in the future, then that it is later than the current time, then the maximum delay
(measured from the current start, so each deferral may move the update by at most `max_delay`), then
the deadline. A new start exactly at the deadline is allowed; only later ones are "past" it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduling.decision import Decision
from scheduling.errors import SchedulingError
from scheduling.times import aware_utc, describe, fmt_instant, optional_aware_utc, require_int

__all__ = ["Decision", "DeferralPolicy", "check_deferral"]


@dataclass(frozen=True)
class DeferralPolicy:
    max_count: int = 2
    max_delay: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        require_int(self.max_count, "deferral max_count", minimum=0)
        if not isinstance(self.max_delay, timedelta) or self.max_delay <= timedelta(0):
            raise SchedulingError(f"deferral max_delay {self.max_delay!r}: expected a positive timedelta")


def check_deferral(
    policy: DeferralPolicy,
    *,
    current_start: datetime,
    new_start: datetime,
    deferrals_so_far: int,
    deadline: datetime | None,
    now: datetime,
) -> Decision:
    """May the update scheduled at `current_start` be deferred to `new_start`?"""
    current = aware_utc(current_start, "current start")
    new = aware_utc(new_start, "new start")
    now_utc = aware_utc(now, "now")
    deadline_utc = optional_aware_utc(deadline, "deadline")
    count = require_int(deferrals_so_far, "deferrals so far", minimum=0)

    if count >= policy.max_count:
        times = "time" if count == 1 else "times"
        return Decision.refuse(f"already deferred {count} {times}; the limit is {policy.max_count}")
    if new < now_utc:
        return Decision.refuse("new time is in the past")
    if new < current:
        return Decision.refuse("new time is earlier than the current one")
    if new == current:
        return Decision.refuse("new time is the same as the current one")
    delay = new - current
    if delay > policy.max_delay:
        return Decision.refuse(
            f"moves the update by {describe(delay)}; "
            f"a deferral may move it by at most {describe(policy.max_delay)}"
        )
    if deadline_utc is not None and new > deadline_utc:
        return Decision.refuse(f"{fmt_instant(new)} is past the release deadline {fmt_instant(deadline_utc)}")
    return Decision.allow(
        f"deferral {count + 1} of {policy.max_count}: "
        f"moves the update by {describe(delay)} to {fmt_instant(new)}"
    )
