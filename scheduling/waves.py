"""Monthly release waves: ring order, error budgets, and when the next wave may start.

Error budgets use AWS Systems Manager MaxErrors semantics: with max_failures=2 the wave stops at the
third failure (failed > max_failures), and with max_failure_rate=10 (percent) it stops once more than
10% of the clusters started so far have failed (failed * 100 / started > 10). Reaching the budget
exactly is still within it. When both limits are set, either one stops the wave. A budget with
neither limit is refused: a release wave without a brake is a configuration mistake, not a default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import TypeVar

from scheduling.decision import Decision
from scheduling.errors import SchedulingError
from scheduling.times import aware_utc, describe, fmt_instant, optional_aware_utc, require_int

__all__ = [
    "RINGS_DEFAULT",
    "Decision",
    "ErrorBudget",
    "budget_exceeded",
    "order_by_ring",
    "wave_may_start",
]

RINGS_DEFAULT: tuple[str, ...] = ("canary", "early", "broad")

T = TypeVar("T")


def order_by_ring(
    items: Iterable[T], key: Callable[[T], str], rings: Sequence[str] = RINGS_DEFAULT
) -> list[T]:
    """`items` sorted by the position of `key(item)` in `rings`; the order within a ring is kept.
    An item in a ring that is not listed is refused rather than silently sent last (or first)."""
    ring_list = list(rings)
    if not ring_list or len(set(ring_list)) != len(ring_list):
        raise SchedulingError(f"rings {ring_list!r}: expected a non-empty list of distinct names")
    position = {name: index for index, name in enumerate(ring_list)}
    keyed: list[tuple[int, T]] = []
    for item in items:
        ring = key(item)
        if ring not in position:
            raise SchedulingError(f"ring {ring!r} is not one of {', '.join(ring_list)}")
        keyed.append((position[ring], item))
    keyed.sort(key=lambda pair: pair[0])  # sort is stable: same-ring items keep their order
    return [item for _, item in keyed]


@dataclass(frozen=True)
class ErrorBudget:
    """How many failures a wave tolerates: an absolute count, a percentage (0..100), or both."""

    max_failures: int | None
    max_failure_rate: float | None

    def __post_init__(self) -> None:
        if self.max_failures is None and self.max_failure_rate is None:
            raise SchedulingError("error budget needs max_failures or max_failure_rate (or both)")
        if self.max_failures is not None:
            require_int(self.max_failures, "error budget max_failures", minimum=0)
        rate = self.max_failure_rate
        if rate is not None and (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or not 0 <= rate <= 100
        ):
            raise SchedulingError(f"error budget max_failure_rate {rate!r}: expected a percentage 0..100")


def budget_exceeded(budget: ErrorBudget, started: int, failed: int) -> str | None:
    """Why the wave must stop, or None while it is within its error budget."""
    require_int(started, "clusters started", minimum=0)
    require_int(failed, "clusters failed", minimum=0)
    if failed > started:
        raise SchedulingError(f"clusters failed {failed} is more than clusters started {started}")
    if budget.max_failures is not None and failed > budget.max_failures:
        failures = "1 failure exceeds" if failed == 1 else f"{failed} failures exceed"
        return f"{failures} the error budget of {budget.max_failures}"
    rate = budget.max_failure_rate
    # Exact arithmetic: 1 failure in 10 against a 10% budget must compare equal, not "10.000000001".
    if rate is not None and started > 0 and Fraction(failed * 100, started) > Fraction(rate):
        percent = f"{failed * 100 / started:.4g}%"
        return f"{failed} of {started} started ({percent}) failed, over the {rate:g}% error budget"
    return None


def wave_may_start(
    previous_finished_at: datetime | None,
    soak: timedelta,
    now: datetime,
    previous_budget_reason: str | None,
) -> Decision:
    """The next wave starts only after the previous one finished within budget and soaked for `soak`.
    `previous_finished_at=None` means the previous wave has not finished (the first wave needs no
    check)."""
    finished = optional_aware_utc(previous_finished_at, "previous wave finished at")
    now_utc = aware_utc(now, "now")
    if not isinstance(soak, timedelta) or soak < timedelta(0):
        raise SchedulingError(f"soak {soak!r}: expected a timedelta of zero or more")
    if previous_budget_reason:
        return Decision.refuse(f"previous wave exceeded its error budget: {previous_budget_reason}")
    if finished is None:
        return Decision.refuse("previous wave has not finished")
    if finished > now_utc:
        raise SchedulingError(
            f"previous wave finished at {fmt_instant(finished)}, after now {fmt_instant(now_utc)}"
        )
    ready = finished + soak
    if now_utc < ready:
        return Decision.refuse(
            f"previous wave is soaking until {fmt_instant(ready)} ({describe(ready - now_utc)} to go)"
        )
    return Decision.allow(f"previous wave finished {fmt_instant(finished)} and soaked for {describe(soak)}")
