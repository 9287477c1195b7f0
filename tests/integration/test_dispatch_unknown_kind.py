"""A planned run whose kind this version does not know (written by a newer Upkeep sharing the database,
or by hand in SQL; the column is a plain VARCHAR, inventory.types.EnumText) is due: the dispatcher's
tick must not fail on it - one bad row would stall every cluster's updates each minute - and must not
start it: only a version that knows the kind knows its notice terms."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from flows.dispatch import dispatch
from inventory.db import session_scope
from inventory.models import RunState
from inventory.repo import get_cluster
from inventory.runs import create_run
from tests.support.runs import planned_run
from tests.support.update_world import CLUSTER, MONDAY, TARGET, World

pytestmark = [pytest.mark.prefect]


@pytest.fixture
def world(prefect_world: World) -> World:
    return prefect_world


def test_a_due_run_of_an_unknown_kind_neither_fails_the_tick_nor_starts(world: World) -> None:
    with session_scope(world.engine) as session:
        cluster = get_cluster(CLUSTER, session=session)
        slot = MONDAY + timedelta(minutes=5)
        run = planned_run(
            session, cluster, to_version=TARGET, source="support", slot_start=slot,
            slot_end=slot + timedelta(hours=2), told_at=MONDAY - timedelta(days=10),
        )  # fmt: skip
        run_id = run.id
    with world.engine.begin() as conn:
        conn.execute(text("UPDATE upgraderun SET kind = 'firmware' WHERE id = :id"), {"id": run_id})
    world.clock.advance(timedelta(minutes=10))

    result = dispatch(max_running=2)

    assert result["started"] == []
    assert world.run().state == RunState.planned
    assert world.upgraded() == [0, 0, 0]


def test_an_orphaned_running_run_of_an_unknown_kind_is_not_taken_over(world: World) -> None:
    with session_scope(world.engine) as session:
        cluster = get_cluster(CLUSTER, session=session)
        run = create_run(cluster, to_version=TARGET, source="support", requested_by="t", session=session)
        run.lease_owner, run.lease_until = "newer:1/abc", MONDAY - timedelta(minutes=30)  # it crashed
        session.add(run)
        session.flush()
        run_id = run.id
    with world.engine.begin() as conn:
        conn.execute(text("UPDATE upgraderun SET kind = 'firmware' WHERE id = :id"), {"id": run_id})

    result = dispatch(max_running=2)

    assert result["taken_over"] == []
    run = world.run()
    assert run.state == RunState.running and run.lease_owner == "newer:1/abc"
    assert world.upgraded() == [0, 0, 0]
