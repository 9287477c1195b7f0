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


def test_request_now_carries_out_the_plan_made_where_the_run_is_written(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`request --now` plans the update before asking the API (a typo is refused without waiting for it),
    and again in the transaction that writes the run (what the first plan read may have changed during
    the API's wait: test below, adv48); the run is carried out on that second plan, not the stale one."""
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
    assert len(plans) == 2, plans
    assert len(carried) == 1 and carried[0] is plans[-1]  # the plan made where the run is written
    with session_scope(prefect_world.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.to_version == TARGET and run.override_reason == "now"


@pytest.mark.parametrize("command", ["update", "request-now"])
def test_an_inventory_changed_during_the_api_wait_is_planned_anew_before_the_run_is_written(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The pre-checks wait on the Prefect API (up to UPKEEP_PREFECT_ANSWER_SECONDS, 300 s at most, per
    read): meanwhile another SRE's update of the cluster ended (its version now the target), or the
    inventory was imported anew. The plan made before that wait is stale: written on it, the run was an
    update 9.10.0→9.10.0 (`create_run` reads the cluster's version afresh), which the flow then refused
    after the run was written, the cluster claimed by it (adv48: `request --now` planned once since
    ba1523e; the plan in the write's transaction was there since 90b28e4 to validate what is written)."""
    from sqlmodel import select

    import upkeep.updates as updates
    from flows.plan import PlanError
    from inventory.db import session_scope
    from inventory.models import Cluster, UpgradeRun
    from upkeep.requests import request_update

    _counted(prefect_world, monkeypatch)
    checked = updates.cluster_limit_grants

    def another_update_ends_meanwhile() -> None:
        checked()
        with session_scope(prefect_world.engine) as session:
            cluster = session.exec(select(Cluster).where(Cluster.name == CLUSTER)).one()
            cluster.version = TARGET
            session.add(cluster)

    monkeypatch.setattr(updates, "cluster_limit_grants", another_update_ends_meanwhile)
    with pytest.raises(PlanError):
        if command == "update":
            updates.run_update(CLUSTER, TARGET, engine=prefect_world.engine, as_json=True)
        else:
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
    with session_scope(prefect_world.engine) as session:
        assert session.exec(select(UpgradeRun)).all() == []
