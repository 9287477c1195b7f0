"""adv52: a hostile review of h-pause (an SRE's pause left paused past its window tells the customer
'stopped'). Each test is a way an operator, the clock or another process could make the customer hear the
wrong thing, or the SRE be told the wrong thing; on SQLite and PostgreSQL (the `engine` fixture), the
races on real PostgreSQL only."""

from __future__ import annotations

from datetime import timedelta

from tests.support.update_world import MONDAY, World
from tests.unit.test_pause_told import END, _paused_after_node_1, _stopped_alerts, _tick
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


def test_a_pause_told_stopped_resumed_and_paused_again_before_it_started_is_not_told_stopped_twice(
    on_call_world: World,
) -> None:
    """Monday's window ends paused: 'stopped'. Tuesday 00:01 the SRE resumes it inside the window and, as
    its pre-flight runs, pauses it again (a second look): it pauses before its first node, so 'started' is
    never sent again. Tuesday's window ends: a second 'stopped' went out - the customer read "stopped"
    twice in a row with nothing between, a second CANCEL of an event already withdrawn. Their last word
    of the update is already 'stopped': it is marked stopped for now (the portal, a resume outside a
    window replans it) and not told again."""
    from inventory.runs import paused_stopped
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]

    def pause_in_preflight(_node: object) -> None:
        world.nodes[2].before.clear()
        request_stop(run_id, "pause", engine=world.engine, actor="sre")

    world.nodes[2].before["disk"] = pause_in_preflight
    world.clock.now = MONDAY + DAY + timedelta(minutes=1)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "paused", state.message
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run_id) == ["scheduled", "started", "stopped"]

    _tick(world, END + DAY)
    _tick(world, END + DAY + timedelta(minutes=1))
    assert world.notices(run_id) == ["scheduled", "started", "stopped"], world.notices(run_id)
    assert paused_stopped(world.run()), world.run().reason
    # The SRE hears of each window ending paused; the second says the customer was not told again.
    assert _stopped_alerts(world, run_id) == 2
