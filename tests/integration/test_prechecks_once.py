"""`upkeep update` and `upkeep request --now` ask the Prefect API whether it answers, and read the fleet's
cluster limit, before writing the run: once each. They asked both again in `run_product_update`, which
they called with no owner (an API read each, ~60 s each against an API that hangs, for the same answer).

The real Prefect test server and a real limit (`prefect_world`); the flow itself is not run here."""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from tests.support.update_world import CLUSTER, TARGET, World

pytestmark = [pytest.mark.prefect]


def _counted(world: World, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Calls of the two pre-checks (each the real one); the flow replaced by a stand-in."""
    import upkeep.updates as updates

    limit = f"clusters-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    world.runtime.cluster_limit = limit
    calls: Counter[str] = Counter()
    for name in ("prefect_answers", "cluster_limit_grants"):
        real = getattr(updates, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(updates, name, counted)
    monkeypatch.setattr(updates, "_carry_out", lambda plan, run_id, **_: run_id)
    return calls


def test_update_asks_the_prefect_api_and_reads_the_limit_once(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upkeep.updates import run_update

    calls = _counted(prefect_world, monkeypatch)
    run_update(CLUSTER, TARGET, engine=prefect_world.engine, as_json=True)
    assert calls == {"prefect_answers": 1, "cluster_limit_grants": 1}


def test_request_now_asks_the_prefect_api_and_reads_the_limit_once(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upkeep.requests import request_update

    calls = _counted(prefect_world, monkeypatch)
    request_update(
        CLUSTER,
        TARGET,
        source="customer",
        case=None,
        urgent=False,
        now_run=True,
        override_reason="now",
        engine=prefect_world.engine,
        as_json=True,
    )
    assert calls == {"prefect_answers": 1, "cluster_limit_grants": 1}


def test_request_now_plans_the_update_once(prefect_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """`request --now` planned the update (release, path, nodes: five reads) before asking the API, and
    again in the transaction that writes the run; `update` plans once. The one plan is the run's."""
    import upkeep.requests as requests
    from inventory.db import session_scope
    from inventory.models import UpgradeRun

    _counted(prefect_world, monkeypatch)
    plans: list[object] = []
    real = requests.plan_update

    def counted(*args: Any, **kwargs: Any) -> Any:
        plans.append(real(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(requests, "plan_update", counted)
    carried: list[object] = []
    import upkeep.updates as updates

    def carry_out(plan: object, run_id: int, **_: Any) -> int:
        carried.append(plan)
        return run_id

    monkeypatch.setattr(updates, "_carry_out", carry_out)
    run_id = requests.request_update(
        CLUSTER,
        TARGET,
        source="customer",
        case=None,
        urgent=False,
        now_run=True,
        override_reason="now",
        engine=prefect_world.engine,
        as_json=True,
    )
    assert len(plans) == 1, plans
    assert carried == plans  # the run is carried out on that plan
    with session_scope(prefect_world.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.to_version == TARGET and run.override_reason == "now"
