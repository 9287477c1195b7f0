"""A run carried over to its next window keeps what it already did there.

A package whose copy to the nodes outlasts the room left in the window: the run carried over after
the copy (nothing changed on the cluster), and in the next window copied it again, found no room
again, carried over again: every window, forever, the customer mailed 'rescheduled' each time. Now a
node that already holds the package this run put there, verified again by its checksum on the node
(the agent's own `stage`, over SSH), is not copied to again: the next window goes to the nodes.

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_update_branches.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from inventory.db import session_scope
from inventory.models import NodeStep, RunState
from tests.support.fakes import FakeRunner
from tests.support.update_world import HOSTS, MONDAY, World
from tests.unit.test_update_branches import _planned_monday, short_window

__all__ = ["short_window"]  # the fixture, used here by name

TUESDAY = MONDAY + timedelta(days=1)


@pytest.fixture
def slow_copy_to_node_3(short_window: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every copy of the package to node 3 takes 55 minutes of the window's hour (a large package over a
    slow link): 5 minutes are left after it, and a node needs 10. Yields the hosts copied to, in order."""
    world = short_window
    real_put = FakeRunner.put
    copied: list[str] = []

    def put(self: FakeRunner, local: Path, remote: str) -> None:
        real_put(self, local, remote)
        copied.append(self.host)
        if self.host == HOSTS[2]:
            world.clock.advance(timedelta(minutes=55))

    monkeypatch.setattr(FakeRunner, "put", put)
    yield copied


def _distribute_steps(world: World, run_id: int) -> list[tuple[str, str]]:
    with session_scope(world.engine) as session:
        query = select(NodeStep).where(NodeStep.run_id == run_id, NodeStep.step == "distribute")
        return [
            (str(step.state), step.output_tail) for step in session.exec(query.order_by(col(NodeStep.id)))
        ]


def test_a_copy_that_outlasts_the_window_is_kept_and_the_next_window_goes_to_the_nodes(
    short_window: World, slow_copy_to_node_3: list[str]
) -> None:
    world, copied = short_window, slow_copy_to_node_3
    run_id = _planned_monday(world)

    assert world.update(run_id=run_id).is_completed()
    run = world.run()
    assert run.state == RunState.planned and run.slot_start == TUESDAY, (run.state, run.reason)
    assert sorted(copied) == HOSTS and world.upgraded() == [0, 0, 0]

    world.clock.now = TUESDAY + timedelta(minutes=1)  # the next window: the dispatcher starts it again
    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.succeeded, (run.state, run.reason)
    assert world.upgraded() == [1, 1, 1]
    assert sorted(copied) == HOSTS, copied  # nothing copied a second time
    # Each node's copy was asked again, by its checksum on the node, not trusted from our record alone.
    for node in world.nodes:
        stages = [command for command in node.commands if command[0] == "stage"]
        assert len(stages) == 2 and stages[0] == stages[1], stages
        assert len(node.files) == 1, sorted(node.files)
    kept = _distribute_steps(world, run_id)[3:]
    assert len(kept) == 3 and all("not copied again" in output for _, output in kept), kept
    assert world.notices(run_id) == ["scheduled", "rescheduled", "started", "completed"]


def test_a_copy_the_node_no_longer_holds_is_made_again(
    short_window: World, slow_copy_to_node_3: list[str]
) -> None:
    """Node 1 lost the copy between the windows (its incoming folder cleaned), node 2's no longer matches
    the checksum (corrupted on its disk): those two are copied to again, node 3's is kept."""
    world, copied = short_window, slow_copy_to_node_3
    run_id = _planned_monday(world)
    assert world.update(run_id=run_id).is_completed()
    assert world.run().state == RunState.planned
    world.nodes[0].files.clear()
    [name] = world.nodes[1].files
    world.nodes[1].files[name] = b"bit rot"
    copied.clear()

    world.clock.now = TUESDAY + timedelta(minutes=1)
    assert world.update(run_id=run_id).is_completed()

    assert world.run().state == RunState.succeeded, world.run().reason
    assert sorted(copied) == HOSTS[:2], copied
    assert world.upgraded() == [1, 1, 1]


def test_a_recorded_copy_name_the_agent_would_refuse_is_copied_again_not_failed(
    short_window: World, slow_copy_to_node_3: list[str]
) -> None:
    """The record is only where to look: a name in it that the agent's vocabulary refuses (an edited
    row) makes that node's copy again, it does not fail the run."""
    from sqlalchemy import update

    world, copied = short_window, slow_copy_to_node_3
    run_id = _planned_monday(world)
    assert world.update(run_id=run_id).is_completed()
    with world.engine.begin() as conn:
        conn.execute(
            update(NodeStep)
            .where(col(NodeStep.run_id) == run_id, col(NodeStep.step) == "distribute")
            .values(detail=NodeStep.detail + " ; rm -rf /")
        )
    copied.clear()

    world.clock.now = TUESDAY + timedelta(minutes=1)
    assert world.update(run_id=run_id).is_completed()

    # copied again (and node 3's copy outlasting the window again): carried over, not failed
    assert world.run().state == RunState.planned, world.run().reason
    assert sorted(copied) == HOSTS, copied
    assert not any(" ; " in " ".join(command) for node in world.nodes for command in node.commands)
