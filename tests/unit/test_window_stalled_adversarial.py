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


def test_a_holder_that_froze_before_its_carry_over_does_not_move_the_run_its_new_owner_stalled(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third idle window: the run's process looked at the window (no room), then stood still (a VM
    paused, SIGSTOP) past its lease; the dispatcher took the run over and carried it over: stalled,
    paused, the SRE told "not re-slotted". The first process wakes and carries it over too: `carry_over`
    looked at no state, so it re-slotted the paused run to the next window ('rescheduled' to the
    customer, 'carried-over' to the SRE) - the stall undone behind the SRE's back, and its count
    started afresh by the stall it undid. Without a stall the same race moved a carried-over run a second
    window on. A run no longer running is no longer this process's to move."""
    from flows import outcomes
    from flows import product_update as update_flow
    from flows.plan import plan_update
    from tests.support.races import meanwhile
    from tests.support.update_world import CLUSTER, TARGET

    world = on_call_world
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1)] == ["carried over", "carried over"]

    def taken_over_and_carried_over() -> str:
        with session_scope(world.engine) as session:
            plan = plan_update(CLUSTER, TARGET, session=session)
            session.execute(
                update(UpgradeRun)
                .where(col(UpgradeRun.id) == run_id)
                .values(lease_owner="elsewhere:1/abcdef")
            )
        return outcomes.carry_over(world.runtime, plan, run_id)

    other = meanwhile(monkeypatch, update_flow, "carry_over", taken_over_and_carried_over)
    _taken_up_late(world, run_id, 2)

    assert other == ["paused"]
    run = world.run()
    assert run.state == RunState.paused, (run.state, run.reason)
    assert run.slot_start == MONDAY + 2 * DAY and run.reason.startswith("stalled"), run.reason
    assert world.notices(run_id) == ["rescheduled", "rescheduled"]
