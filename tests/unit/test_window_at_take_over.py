"""A run taken over (the dispatcher's take-over of an orphan) or resumed already past its window's
cutoff, with no fleet cluster limit set, downloaded the package and pre-flighted every node over SSH
before the after-gate look carried it over: the window is now looked at before the download with or
without a limit (with one it was, once the slot was granted). A run without a window (`upkeep update`)
goes on as before.

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_update_branches.py."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import RunState
from tests.support.update_world import MONDAY, PACKAGE, World
from tests.unit.test_update_branches import _planned_monday, short_window

__all__ = ["short_window"]  # the fixture, used here by name

TUESDAY = MONDAY + timedelta(days=1)


def test_a_take_over_past_the_cutoff_without_a_cluster_limit_downloads_nothing_and_reaches_no_node(
    short_window: World,
) -> None:
    world = short_window
    run_id = _planned_monday(world)
    world.clock.now = MONDAY + timedelta(minutes=55)  # 5 minutes left, a node needs 10

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    assert state.result()["state"] == "carried over"
    assert world.files.downloads == []
    assert [node.commands for node in world.nodes] == [[], [], []]
    assert world.fleet.connected == {}
    run = world.run()
    assert run.state == RunState.planned and run.slot_start == TUESDAY, (run.state, run.reason)
    assert "no room left" in run.reason and "nothing changed on any node" in run.reason, run.reason
    assert world.notices(run_id) == ["scheduled", "rescheduled"]
    with session_scope(world.engine) as session:
        query = select(Alert).where(Alert.run_id == run_id, Alert.kind == "carried-over")
        assert len(session.exec(query).all()) == 1


def test_a_run_without_a_window_late_in_the_day_goes_on(short_window: World) -> None:
    """An SRE's `upkeep update` has no window: at 00:55 (5 minutes before the cluster's window ends) it
    downloads, copies and upgrades as before."""
    world = short_window
    world.clock.now = MONDAY + timedelta(minutes=55)

    state = world.update()

    assert state.is_completed(), state.message
    assert world.run().state == RunState.succeeded, world.run().reason
    assert world.files.downloads == [PACKAGE]
    assert world.upgraded() == [1, 1, 1]
