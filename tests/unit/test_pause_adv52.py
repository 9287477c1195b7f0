"""adv52: a hostile review of h-pause (an SRE's pause left paused past its window tells the customer
'stopped'). Each test is a way an operator, the clock or another process could make the customer hear the
wrong thing, or the SRE be told the wrong thing; on SQLite and PostgreSQL (the `engine` fixture), the
races on real PostgreSQL only."""

from __future__ import annotations

from datetime import timedelta

from tests.support.update_world import MONDAY, World
from tests.unit.test_pause_told import END
from tests.unit.test_update_branches import _planned_monday
from tests.unit.test_window_stalled_adversarial import on_call_world

__all__ = ["on_call_world"]  # the fixture, used here by name

DAY = timedelta(days=1)


def test_a_pause_asked_after_its_window_ended_does_not_promise_a_time_already_past(
    on_call_world: World,
) -> None:
    """Node 1's upgrade overran the window's end (01:00); the SRE pauses at 01:05. The answer said "if it is
    not resumed before its window ends at 2026-12-07 01:00 ... the customer is told": a time already past,
    as if the SRE still had until then. The window is over: once the run pauses (after the node in
    progress) the dispatcher's next tick tells the customer."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.db import session_scope
    from inventory.models import RunState, UpgradeRun
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(state=RunState.running, started_at=MONDAY, window_start=MONDAY, window_end=END)
        )
    world.clock.now = END + timedelta(minutes=5)
    said = request_stop(run_id, "pause", engine=world.engine, actor="sre")
    assert "before its window ends at" not in said, said
    assert (
        "its window ended at 2026-12-07 01:00 UTC (2026-12-07 01:00 UTC): the customer is told it stopped "
        "for now ('stopped') at the dispatcher's next tick once it has paused" in said
    ), said
