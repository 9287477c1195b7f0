"""adv40: attacks on the braked-fleet refusals (adv39): what counts as a brake, and what they cost."""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from inventory.db import session_scope
from inventory.models import RunState
from tests.support.update_world import World

pytestmark = [pytest.mark.prefect]


def test_a_disabled_limit_of_zero_is_no_brake_for_the_refusals(prefect_world: World) -> None:
    """`prefect gcl disable NAME`: Prefect enforces no inactive limit (its increment skips them), so a
    flow under a disabled limit of 0 runs. The refusals read only `limit < 1`: `upkeep update --check`
    failed `cluster-limit` and `upkeep update|resume|request --now` refused "allows 0 clusters at once"
    for an update that runs, and the dispatcher held the fleet on an operator's 'limit off'."""
    from flows.check import check_update
    from flows.plan import plan_update
    from flows.product_update import limit_unusable
    from tests.support.update_world import CLUSTER, TARGET

    world = prefect_world
    limit = f"clusters-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        disabled = GlobalConcurrencyLimitCreate(name=limit, limit=0, active=False)
        client.create_global_concurrency_limit(disabled)
    world.runtime.cluster_limit = limit

    assert limit_unusable(limit) == ""
    with session_scope(world.engine) as session:
        plan = plan_update(CLUSTER, TARGET, session=session)
    checked = check_update(plan, world.runtime)
    assert [item for item in checked.checks if not item.ok] == [], checked
    ran = world.update()  # what Prefect does with it: the update goes through
    assert ran.is_completed(), ran
    assert world.run().state == RunState.succeeded


def test_the_braked_tick_reads_an_orphans_verified_nodes_in_one_query_not_one_per_node(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While braked, every tick tells each orphan (its alert once a day, keyed): it asked `node_done` once
    per node of each orphan, every tick (a query each: 3 here, orphans x nodes in a fleet, every ~30 s
    while the brake lasts, for alerts already sent). One query for all of them."""
    import logging

    from sqlalchemy import event

    from flows.dispatch import cluster_limit_blocks
    from tests.integration.test_braked_fleet_commands import _orphan_every_node_verified
    from tests.integration.test_cluster_limit_resumed import _limit_of_zero

    world = prefect_world
    _orphan_every_node_verified(world, monkeypatch)
    _limit_of_zero(world)
    log = logging.getLogger("adv40")
    assert cluster_limit_blocks(world.runtime, world.clock(), log)  # today's alert sent

    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(world.engine, "before_cursor_execute", seen)
    try:
        assert cluster_limit_blocks(world.runtime, world.clock(), log)
    finally:
        event.remove(world.engine, "before_cursor_execute", seen)
    steps = [statement for statement in statements if "FROM nodestep" in statement]
    assert len(steps) <= 1, steps


def test_an_update_scheduled_while_braked_says_the_start_will_be_held(
    prefect_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Product decision (the lead's): `upkeep request` without --now into a braked fleet still plans the
    run and queues the customer's notice (the customer asked; the dispatcher re-slots it and tells the
    customer if the brake outlasts the slot), and its line says that the start is held by that limit
    until it is at least 1. It said nothing of the brake (adv39 left it to plan ahead)."""
    from tests.integration.test_cluster_limit_resumed import _limit_of_zero

    world = prefect_world
    limit = _limit_of_zero(world)
    world.request(now_run=False, as_json=False)
    said = capsys.readouterr().out
    assert "scheduled" in said, said  # it was planned, and the customer's notice queued
    assert limit in said, said  # ... with word that the dispatcher holds it while braked
    assert len(said.strip().splitlines()) == 1, said
    assert "the fleet is held" in said and "at least 1" in said, said
    with session_scope(world.engine) as session:
        from sqlmodel import select

        from inventory.models import UpgradeRun

        [run] = session.exec(select(UpgradeRun)).all()
        assert run.state == RunState.planned and run.slot_start is not None


def test_an_update_scheduled_while_braked_says_so_in_its_json_as_a_field(
    prefect_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.integration.test_cluster_limit_resumed import _limit_of_zero

    world = prefect_world
    limit = _limit_of_zero(world)
    world.request(now_run=False, as_json=True)
    answer = json.loads(capsys.readouterr().out)
    assert answer["cluster_limit"]["limit"] == limit and answer["cluster_limit"]["held"] is True, answer
    assert limit in answer["cluster_limit"]["detail"], answer


def test_an_update_scheduled_with_the_prefect_api_away_is_planned_with_a_warning(
    prefect_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The brake cannot be read (the API does not answer at that moment): the planning is not blocked;
    a warning on stderr says the brake could not be checked, and the JSON field says it is not known."""
    import json

    from prefect.settings import PREFECT_API_URL, temporary_settings

    world = prefect_world
    world.runtime.cluster_limit = "clusters"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        world.request(now_run=False, as_json=True)
    said = capsys.readouterr()
    answer = json.loads(said.out)
    assert answer["id"] is not None, answer  # planned all the same
    assert answer["cluster_limit"]["held"] is None, answer
    assert said.err.startswith("warning: whether the fleet is held could not be checked"), said.err
    assert "UPKEEP_CLUSTER_LIMIT 'clusters'" in said.err and len(said.err.strip().splitlines()) == 1, said.err


def test_a_resumed_run_whose_every_node_was_verified_does_not_queue_for_a_slot_of_a_full_limit(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """adv39: a run whose every node was verified "needs no slot", so `upkeep resume` skips the limit
    check. But the flow still queued for one: with every slot held by other clusters, the resume waited
    (for as long as they take) to record an update that is done, the customer not told 'completed'.
    `_slot_look` is the waiting run's poll; here its second look ends the wait (taken over) so that a
    queued run shows as one instead of hanging the test."""
    import flows.product_update as product_update
    from tests.integration.test_braked_fleet_commands import _orphan_every_node_verified

    world = prefect_world
    run_id = _orphan_every_node_verified(world, monkeypatch)
    limit = f"clusters-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
        client.increment_concurrency_slots(names=[limit], slots=1, mode="concurrency")  # another cluster's
    world.runtime.cluster_limit = limit
    world.runtime.slot_poll = 0.01
    looks: list[str] = []
    real_look = product_update._slot_look

    def look(runtime: object, run: int, owner: str) -> str:
        looks.append(owner)
        return product_update.TAKEN_OVER if len(looks) > 1 else real_look(runtime, run, owner)  # type: ignore[arg-type]

    monkeypatch.setattr(product_update, "_slot_look", look)

    world.update(run_id=run_id)

    assert looks == [], "queued for a cluster slot"
    assert world.run().state == RunState.succeeded
    assert world.notices(run_id)[-1] == "completed"


def test_update_check_with_the_prefect_api_away_does_not_say_the_limit_grants_slots(
    prefect_world: World,
) -> None:
    """`--check`'s cluster-limit item read "'clusters' grants slots", ok, when the limit could not be
    read at all (the Prefect API away): a claim nobody checked, and `upkeep update` is refused then."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.check import check_update
    from flows.plan import plan_update
    from tests.integration.test_cluster_limit_resumed import _limit_of_zero
    from tests.support.update_world import CLUSTER, TARGET

    world = prefect_world
    limit = _limit_of_zero(world)
    with session_scope(world.engine) as session:
        plan = plan_update(CLUSTER, TARGET, session=session)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        checked = check_update(plan, world.runtime)

    [item] = [item for item in checked.checks if item.what == "cluster-limit"]
    assert not item.ok and "grants slots" not in item.detail, item
    assert limit in item.detail and "\n" not in item.detail, item.detail


@pytest.mark.parametrize(
    "tail", ["\nSECOND LINE", "\x1b]0;owned\x07\x1b[2J", "\r"], ids=["newline", "escape", "carriage-return"]
)
def test_the_held_line_of_a_limit_with_a_hostile_name_stays_one_plain_line(
    prefect_world: World, capsys: pytest.CaptureFixture[str], tail: str
) -> None:
    """adv43: the held line quotes the limit's name for `prefect gcl update NAME` with shlex.quote, which
    leaves an ESC as it is: a limit named with one (by whoever can create limits on the shared Prefect
    server, or set the setting) wrote a terminal control sequence (a window title, a cleared screen)
    onto the SRE's terminal; Rich strips only BEL, BS, VT, FF and CR. (A name with a newline is not
    found by its read, so the line never quotes it: held for now, kept here as a guard.)"""
    world = prefect_world
    limit = f"clusters-{uuid4().hex[:8]}{tail}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=0))
    world.runtime.cluster_limit = limit

    world.request(now_run=False, as_json=False)

    said = capsys.readouterr().out
    assert "the fleet is held" in said, said
    assert len(said.strip().splitlines()) == 1, said
    assert "\x1b" not in said and "\r" not in said, repr(said)
