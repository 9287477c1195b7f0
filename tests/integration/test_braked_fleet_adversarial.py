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
