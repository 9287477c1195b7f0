"""Escalation, as the support handbook describes it: an escalated case is held by the Escalation
Manager (the SRE Manager role), who makes sure internal and customer stakeholders get regular updates.
How regular is a cadence per priority. Pure rules, no I/O; `now` is passed in."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta

from scheduling.errors import SchedulingError
from scheduling.sla import Priority, parse_priority

__all__ = ["DEFAULT_CADENCE", "parse_cadence", "update_due_after", "updates_missed"]

DEFAULT_CADENCE = "P0=1h,P1=4h,P2=24h,P3=72h"
_ITEM = re.compile(r"\s*(P[0-3])\s*=\s*([0-9]{1,4})\s*([hm])\s*", re.ASCII | re.IGNORECASE)


def parse_cadence(text: str) -> dict[Priority, timedelta]:
    """'P0=1h,P1=4h,P2=24h,P3=72h' -> {P0: 1 h, ...}; every priority must be given, each > 0."""
    cadence: dict[Priority, timedelta] = {}
    for part in text.split(","):
        match = _ITEM.fullmatch(part)
        if match is None:
            raise SchedulingError(
                f"escalation update cadence {text!r}: expected e.g. {DEFAULT_CADENCE!r} "
                f"(part {part.strip()!r})"
            )
        amount = int(match.group(2))
        if amount == 0:
            raise SchedulingError(f"escalation update cadence {text!r}: {part.strip()!r} must be more than 0")
        unit = timedelta(hours=1) if match.group(3).lower() == "h" else timedelta(minutes=1)
        cadence[parse_priority(match.group(1))] = amount * unit
    missing = [p.value for p in Priority if p not in cadence]
    if missing:
        raise SchedulingError(f"escalation update cadence {text!r}: no interval for {', '.join(missing)}")
    return cadence


def update_due_after(
    shared_at: datetime, priority: Priority | str, cadence: Mapping[Priority, timedelta]
) -> datetime:
    """When the next update of an escalated case is due, given when the last one was shared."""
    return shared_at + cadence[Priority(priority)]


def updates_missed(due: datetime | None, now: datetime) -> bool:
    """Whether an escalated case's update is overdue (due at or before now)."""
    return due is not None and due <= now
