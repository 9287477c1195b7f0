"""A run that makes no progress window after window is not re-slotted silently forever.

Each carry-over moved the run to its next window and mailed the customer 'rescheduled', with no bound: a
cause that repeats every window (a copy of the package the nodes lose between windows and that takes
longer than the window's room, an approval that always comes too late, a support tunnel never opened)
carried it over every window, forever, the SRE's 'carried-over' alert drowned among the others. Now the
third window in a row in which no node was upgraded ends with the run paused, not re-slotted, and the
SRE alerted once ('stalled') with what to do; a window in which a node was upgraded starts the count
again, and so does the SRE's resume.

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_update_branches.py; on
SQLite and PostgreSQL (the count is read from audit events' JSON)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import RunState
from tests.support.fakes import FakeNode, FakeRunner
from tests.support.update_world import HOSTS, MONDAY, World
from tests.unit.test_update_branches import _five_minutes_left, _planned_monday, short_window_any_db

__all__ = ["short_window_any_db"]  # the fixture, used here by name

DAY = timedelta(days=1)


@pytest.fixture
def slow_copy(short_window_any_db: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """While the yielded flag is set, every copy of the package to node 3 takes 55 minutes of the
    window's hour (5 are left after it; a node needs 10)."""
    world, slow = short_window_any_db, [True]
    real_put = FakeRunner.put

    def put(self: FakeRunner, local: Path, remote: str) -> None:
        real_put(self, local, remote)
        if self.host == HOSTS[2] and slow[0]:
            world.clock.advance(timedelta(minutes=55))

    monkeypatch.setattr(FakeRunner, "put", put)
    yield slow


def _window(world: World, run_id: int, day: int, *, copies_lost: bool = True) -> str:
    """The run taken up 1 minute into the window `day` days after Monday's (as the dispatcher does),
    the nodes having lost what was copied to them before (cleaned between windows) if `copies_lost`."""
    if copies_lost:
        for node in world.nodes:
            node.files.clear()
    world.clock.now = MONDAY + day * DAY + timedelta(minutes=1)
    state = world.update(run_id=run_id)
    assert state.is_completed(), state.message
    return str(state.result()["state"])


def _alerts(world: World, run_id: int, kind: str) -> list[Alert]:
    with session_scope(world.engine) as session:
        return list(session.exec(select(Alert).where(Alert.run_id == run_id, Alert.kind == kind)))


def test_the_third_window_in_a_row_with_no_node_upgraded_pauses_the_run_and_tells_the_sre_once(
    short_window_any_db: World, slow_copy: list[bool]
) -> None:
    world = short_window_any_db
    run_id = _planned_monday(world)

    assert [_window(world, run_id, day) for day in (0, 1)] == ["carried over", "carried over"]
    assert world.run().slot_start == MONDAY + 2 * DAY

    assert _window(world, run_id, 2) == "paused"

    run = world.run()
    assert run.state == RunState.paused, (run.state, run.reason)
    assert run.slot_start == MONDAY + 2 * DAY  # not re-slotted
    assert "no node upgraded in 3 windows in a row" in run.reason, run.reason
    assert f"upkeep resume {run_id}" in run.reason and f"upkeep cancel {run_id}" in run.reason, run.reason
    assert world.upgraded() == [0, 0, 0]
    # no third 'rescheduled', for a window never given: 'stopped', the slot withdrawn (adv41's follow-up)
    assert world.notices(run_id) == ["scheduled", "rescheduled", "rescheduled", "stopped"]
    assert len(_alerts(world, run_id, "carried-over")) == 2
    [stalled] = _alerts(world, run_id, "stalled")
    assert "3 windows in a row" in stalled.body_text and "not re-slotted" in stalled.body_text, (
        stalled.body_text
    )
    assert "upkeep resume" in stalled.body_text and "upkeep cancel" in stalled.body_text, stalled.body_text
    said = " ".join(stalled.body_text.split())
    assert "the customer's last notice of it was 'rescheduled'" in said, said
    assert "The customer was sent the 'stopped' notice." in said, said

    # The SRE fixed the cause and resumes it in a window: it goes on, with a fresh count.
    slow_copy[0] = False
    assert _window(world, run_id, 3) == "succeeded"
    assert world.run().state == RunState.succeeded and world.upgraded() == [1, 1, 1]
    assert len(_alerts(world, run_id, "stalled")) == 1
    assert world.notices(run_id)[3:] == ["stopped", "started", "completed"]  # told it goes on, then done


def test_a_window_in_which_a_node_was_upgraded_starts_the_count_again(
    short_window_any_db: World, slow_copy: list[bool]
) -> None:
    """Two idle windows, then one that upgrades node 1 before the window ends: that is progress, and
    the run is carried over as always; a count of carry-overs alone would have stopped it."""
    world = short_window_any_db
    run_id = _planned_monday(world)
    assert [_window(world, run_id, day) for day in (0, 1)] == ["carried over", "carried over"]
    slow_copy[0] = False

    def window_ends_during_node_1(node: FakeNode) -> None:
        _five_minutes_left(world)(node)
        node.before.clear()

    world.nodes[0].before["upgrade"] = window_ends_during_node_1

    assert _window(world, run_id, 2) == "carried over"
    run = world.run()
    assert run.state == RunState.planned and run.slot_start == MONDAY + 3 * DAY, (run.state, run.reason)
    assert world.upgraded() == [1, 0, 0]
    assert _alerts(world, run_id, "stalled") == []


def test_a_stalled_run_the_sre_resumes_gets_three_windows_again(
    short_window_any_db: World, slow_copy: list[bool]
) -> None:
    """Resumed with the cause not fixed: the window it is resumed in is the first of a fresh count (it
    carries over as before), not a fourth idle one stalled at once with no new alert."""
    world = short_window_any_db
    run_id = _planned_monday(world)
    assert [_window(world, run_id, day) for day in (0, 1, 2)] == ["carried over", "carried over", "paused"]

    assert [_window(world, run_id, day) for day in (3, 4, 5)] == ["carried over", "carried over", "paused"]
    assert world.run().slot_start == MONDAY + 5 * DAY
    assert len(_alerts(world, run_id, "stalled")) == 2  # one per stall, each told
