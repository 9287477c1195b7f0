"""Adversarial pass adv35 on UPKEEP_CLUSTER_LIMIT naming an unusable Prefect limit (none of that name, or
one of 0) when the run asking for a slot is a resumed one that had already upgraded a node: it failed as
"no node touched; customer not notified" (a vendor-side failure before any node), though node 1 ran the
new version and the customer had been told the update started. It fails as any failure once nodes were
touched does: the customer told it failed with each node's version, the SRE's run-failed alert.

The flow under the real Prefect engine and server (a real limit, Prefect's real 422 for a limit of 0); the
nodes, file server, mail and clock are tests/support/fakes.py's (`prefect_world`)."""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from sqlmodel import select

from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import RunState
from tests.support.update_world import World

pytestmark = [pytest.mark.prefect]


def _limit_of_zero(world: World) -> str:
    """A real Prefect global concurrency limit of 0, named by the run's UPKEEP_CLUSTER_LIMIT."""
    limit = f"clusters-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=0))
    world.runtime.cluster_limit = limit
    return limit


def test_a_resumed_run_that_upgraded_a_node_and_finds_a_cluster_limit_of_zero_is_told_as_failed_mid_way(
    prefect_world: World,
) -> None:
    world = prefect_world
    run = world.paused_after_node_1()
    assert run.id is not None
    limit = _limit_of_zero(world)

    resumed = world.update(run_id=run.id)

    assert resumed.is_failed()
    ended = world.run()
    assert ended.state == RunState.failed, (ended.state, ended.reason)
    assert f"UPKEEP_CLUSTER_LIMIT {limit!r}" in ended.reason, ended.reason
    assert "no node touched" not in ended.reason, ended.reason
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run.id)[-1] == "failed"  # the customer, told it started, hears it stopped
    with session_scope(world.engine) as session:
        kinds = [alert.kind for alert in session.exec(select(Alert).where(Alert.run_id == run.id))]
    assert "vendor-side" not in kinds and "run-failed" in kinds, kinds


def test_a_resumed_run_whose_every_node_was_verified_is_recorded_succeeded_despite_a_limit_of_zero(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after node 3's verification, before recording the success; the limit is 0 when
    the run is resumed (an SRE freezing the fleet at night). It failed: the customer told 'failed' for an
    update complete on every node, a case opened, the run-failed alert (a page, urgent) (adv37). Nothing is
    left to do, so nothing needs a slot: it is recorded succeeded, as a take-over past the cutoff is."""
    world = prefect_world
    run = world.killed_before_recording_success(monkeypatch)
    _limit_of_zero(world)

    resumed = world.update(run_id=run.id)

    ended = world.run()
    assert ended.state == RunState.succeeded, (ended.state, ended.reason)
    assert resumed.is_completed(), resumed.message
    assert world.notices(run.id) == ["started", "completed"]
    with session_scope(world.engine) as session:
        kinds = [alert.kind for alert in session.exec(select(Alert).where(Alert.run_id == run.id))]
    assert kinds == [], kinds


def test_an_sre_resume_while_the_cluster_limit_is_zero_is_refused_and_the_run_stays_paused(
    prefect_world: World,
) -> None:
    """The fleet braked (the limit set to 0 on purpose; the dispatcher starts and takes over nothing) and
    an SRE runs `upkeep resume` on a run paused after node 1: the run fails on the limit, the customer is
    told 'failed', a case is opened and an urgent update pages: a page and a customer's 'failed' over the
    vendor's own brake. Refused up front instead, naming the limit; nothing written."""
    from upkeep.console import CliError
    from upkeep.updates import resume_run

    world = prefect_world
    run = world.paused_after_node_1()
    assert run.id is not None
    limit = _limit_of_zero(world)

    with pytest.raises(CliError, match=limit):
        resume_run(run.id, engine=world.engine, as_json=True, actor="sre")

    ended = world.run()
    assert ended.state == RunState.paused, (ended.state, ended.reason)
    assert world.notices(run.id)[-1] != "failed"


def test_an_sre_update_while_the_cluster_limit_is_zero_is_refused_before_a_run_is_written(
    prefect_world: World,
) -> None:
    """`upkeep update` into a braked fleet: refused in one line naming the limit, before a run is created
    (it was created, then failed before its first node with an SRE alert)."""
    from inventory.models import UpgradeRun
    from tests.support.update_world import CLUSTER, TARGET
    from upkeep.console import CliError
    from upkeep.updates import run_update

    world = prefect_world
    limit = _limit_of_zero(world)

    with pytest.raises(CliError, match=f"{limit}.*nothing was started or changed"):
        run_update(CLUSTER, TARGET, engine=world.engine, as_json=True)

    with session_scope(world.engine) as session:
        assert session.exec(select(UpgradeRun)).all() == []
        assert session.exec(select(Alert)).all() == []
