"""Adversarial pass adv41 on h-loop: the bound on idle carry-overs ('stalled'), the copy kept on the
nodes between windows, and the window looked at before the download.

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_update_branches.py. An idle
window is made the cheapest way there is: the run taken up 55 minutes into its one-hour window (as a
dispatcher back from an outage, or a take-over, does): no room for a node, carried over before the
download, nothing contacted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from tests.support.update_world import MONDAY, World
from tests.unit.test_update_branches import ONCALL, ONE_HOUR, _planned_monday, _world

DAY = timedelta(days=1)


@pytest.fixture
def on_call_world(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A one-hour window every day (00:00-01:00 UTC) and an on-call rotation, on each database."""
    with _world(engine, tmp_path, monkeypatch, window=ONE_HOUR, oncall=ONCALL) as made:
        yield made


def _taken_up_late(world: World, run_id: int, day: int) -> str:
    """The run taken up at 00:55 of the window `day` days after Monday's: 5 minutes left, a node needs 10."""
    world.clock.now = MONDAY + day * DAY + timedelta(minutes=55)
    state = world.update(run_id=run_id)
    assert state.is_completed(), state.message
    return str(state.result()["state"])


def test_an_urgent_update_that_stalls_pages_the_engineer_on_call(on_call_world: World) -> None:
    """An urgent update (a P0/P1 case's fix) that made no progress in three windows is paused and no
    longer re-slotted: nothing will start it again until a human acts. Re-slotted, it at least went on
    trying; paused, only the SRE's e-mail said so, and a paused run is not among the held urgent runs the
    dispatcher pages for (those are planned). "A failed urgent update pages the engineer on call and the
    team lead, at any hour": an urgent update stopped for good until someone acts is paged alike."""
    from inventory.alerts import Page

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        session.execute(update(UpgradeRun).where(col(UpgradeRun.id) == run_id).values(urgent=True))

    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == [
        "carried over",
        "carried over",
        "paused",
    ]

    assert world.run().state == RunState.paused
    with session_scope(world.engine) as session:
        pages = session.exec(select(Page)).all()
    [paged] = pages
    assert len(paged.paged) == 2 and "Tess" in paged.paged, paged.paged  # on call that day, and the lead
    assert "no progress in 3 windows" in paged.reason, paged.reason
    # its own key: a failure of the same run after the SRE's resume must still page
    assert paged.key != f"run:{run_id}", paged.key
