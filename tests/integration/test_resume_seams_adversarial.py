"""adv45: `upkeep resume` of a stalled run outside its window while the fleet is braked (a real Prefect
limit of 0 named by UPKEEP_CLUSTER_LIMIT). 5e8bf43 plans it for its next window before the API is asked
(the replan needs no Prefect); what the SRE is told of the brake is the question here."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from tests.support.update_world import MONDAY, World
from tests.unit.test_update_branches import ONE_HOUR, _planned_monday

pytestmark = [pytest.mark.prefect]

DAY = timedelta(days=1)


@pytest.fixture
def windowed_prefect_world(sqlite_engine: Engine, tmp_path: Path, prefect_harness: None) -> Iterator[World]:
    """prefect_world (fakes under the real Prefect server) with a one-hour window every day at 00:00 UTC."""
    from flows import runtime as flow_runtime

    made = World(sqlite_engine, tmp_path, window=ONE_HOUR)
    flow_runtime.configure(made.runtime)
    try:
        yield made
    finally:
        flow_runtime.configure(None)


def _left_stalled(world: World) -> int:
    """Paused by the stall bound, as flows/outcomes.py `_stalled` leaves it (its slot Wednesday's)."""
    from flows.records import STALLED_REASON

    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        stall = update(UpgradeRun).where(col(UpgradeRun.id) == run_id)
        session.execute(
            stall.values(
                state=RunState.paused,
                slot_start=MONDAY + 2 * DAY,
                slot_end=MONDAY + 2 * DAY + timedelta(minutes=30),
                reason=f"{STALLED_REASON}no node upgraded in 3 windows in a row, the last as too late",
            )
        )
    world.clock.now = MONDAY + 2 * DAY + timedelta(hours=12)  # noon: no window open
    return run_id


@pytest.mark.parametrize("as_json", [False, True], ids=["line", "json"])
def test_a_stalled_run_replanned_while_the_fleet_is_braked_says_the_start_will_be_held(
    windowed_prefect_world: World, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    """The fleet braked (limit 0), the SRE resumes the stalled run at noon: planned for tomorrow's window,
    the customer told 'rescheduled'. The line said "the dispatcher starts it then" - it will not: it
    holds the start while the limit grants no slot (and re-slots it again, telling the customer, if the
    brake outlasts the slot). `upkeep request` into a braked fleet says the start is held by that limit
    (adv40's product decision); the replan said nothing of it, in its line or its JSON."""
    import json

    from tests.integration.test_cluster_limit_resumed import _limit_of_zero
    from upkeep.updates import resume_run

    world = windowed_prefect_world
    run_id = _left_stalled(world)
    limit = _limit_of_zero(world)

    assert resume_run(run_id, engine=world.engine, as_json=as_json, actor="sre") == 0

    said = capsys.readouterr().out
    run = world.run()
    assert (run.state, run.slot_start) == (RunState.planned, MONDAY + 3 * DAY), (run.state, run.reason)
    assert world.notices(run_id) == ["scheduled", "rescheduled"]
    if as_json:
        answer = json.loads(said)
        assert answer["cluster_limit"]["limit"] == limit and answer["cluster_limit"]["held"] is True, answer
        return
    assert len(said.strip().splitlines()) == 1, said  # one line, as request says it
    assert limit in said and "the fleet is held" in said and "at least 1" in said, said
    assert "the dispatcher starts it then" not in said, said
