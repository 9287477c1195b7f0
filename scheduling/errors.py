"""The one error type of the scheduling rules.

Every bad input raises `SchedulingError`, a `ValueError`, whose message names the bad value and what was
expected, so callers (API, CLI) can show it to a person unchanged.
"""

from __future__ import annotations


class SchedulingError(ValueError):
    """Input the scheduling rules cannot work with; the message says what and why."""


class SlotBlocked(SchedulingError):
    """Scheduling is refused outright (e.g. the cluster has an open P0/P1 case)."""


class NoSlot(SchedulingError):
    """No slot satisfies every rule within the search horizon; the message names the reason."""
