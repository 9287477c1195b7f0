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


def test_a_resumed_run_that_upgraded_a_node_and_finds_a_cluster_limit_of_zero_is_told_as_failed_mid_way(
    prefect_world: World,
) -> None:
    world = prefect_world
    world.ask_at_node_1("pause")
    assert world.update().is_completed()
    run = world.run()
    assert run.id is not None and run.state == RunState.paused and world.upgraded() == [1, 0, 0]
    world.nodes[0].before.clear()
    limit = f"clusters-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=0))
    world.runtime.cluster_limit = limit

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
