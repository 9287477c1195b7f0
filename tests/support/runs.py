"""Planned runs as the schedule leaves them, for tests that start where the dispatcher starts: a run of a
cluster in state planned with its announced slot (and, when given, when the customer was told).

`planned_run` is the one way tests write such a run; `due_now` is the common case, a run whose slot
has just begun on the wall clock and whose notice went out in good time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from inventory.models import Cluster, RunState, UpgradeRun
from inventory.runs import create_run
from inventory.types import utcnow

TARGET = "9.10.0"


def planned_run(
    session: Any,
    cluster: Cluster,
    *,
    slot_start: datetime,
    slot_end: datetime,
    to_version: str = TARGET,
    source: str = "schedule",
    told_at: datetime | None = None,
    notice_sequence: int | None = None,
) -> UpgradeRun:
    """A planned run of `cluster` to `to_version` whose slot is [slot_start, slot_end). `told_at` when the
    customer was told of it (the dispatcher re-checks the notice period against it) and
    `notice_sequence` the invite's SEQUENCE so far; both left as `create_run` leaves them when not given.
    Flushed: its id is set."""
    run = create_run(
        cluster,
        to_version=to_version,
        source=source,
        requested_by="t",
        session=session,
        state=RunState.planned,
    )
    run.slot_start, run.slot_end = slot_start, slot_end
    if told_at is not None:
        run.told_at = told_at
    if notice_sequence is not None:
        run.notice_sequence = notice_sequence
    session.add(run)
    session.flush()
    return run


def due_now(session: Any, cluster: Cluster, *, to_version: str = TARGET) -> UpgradeRun:
    """A planned run of `cluster` whose announced slot began a minute ago (on the wall clock) and lasts
    4 h, announced four days before: the dispatcher's next tick starts it."""
    now = utcnow()
    return planned_run(
        session,
        cluster,
        to_version=to_version,
        slot_start=now - timedelta(minutes=1),
        slot_end=now + timedelta(hours=4),
        told_at=now - timedelta(days=4),  # in good time: the dispatcher's re-check of the notice passes
        notice_sequence=1,
    )
