"""`upkeep cancel` racing the start of a resumed run (adversarial pass on #14). The resuming flow read
the run, the cancel (seeing it planned) cancelled it and told the customer, and then the flow wrote
`running` over `cancelled` and upgraded every node: on PostgreSQL nothing locked the row between the
flow's read and its write. Now whichever comes second sees the other's outcome: a cancel that lands
while the flow takes the run is a requested cancel, honoured before the first node."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlmodel import select

import flows.product_update as product_update_module
from flows.product_update import product_update
from inventory.db import session_scope
from inventory.models import Cluster, RunState, UpgradeRun
from tests.integration.conftest import nodes_of
from tests.support.runs import due_now
from upkeep.updates import request_stop

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"


def test_a_cancel_racing_the_start_of_a_resume_is_never_overwritten(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = lab_runtime_any_db.engine
    with session_scope(engine) as session:
        cluster = session.exec(select(Cluster).where(Cluster.name == fresh_cluster)).one()
        run_id = due_now(session, cluster).id
        session.flush()
    assert run_id is not None
    real, answers = product_update_module.record_window, []

    def cancel() -> None:
        answers.append(request_stop(run_id, "cancel", engine=engine, actor="sre", reason="race"))

    def record_window(*args: Any, **kwargs: Any) -> Any:
        # The flow has read the run and is about to write it `running`: the cancel comes now. It
        # either completes (nothing locks the row) or waits for the flow's transaction.
        other = threading.Thread(target=cancel)
        other.start()
        other.join(timeout=5)
        threads.append(other)
        return real(*args, **kwargs)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(product_update_module, "record_window", record_window)
    product_update(cluster=fresh_cluster, to_version=TARGET, run_id=run_id, return_state=True)
    for thread in threads:
        thread.join(timeout=60)

    assert answers, "the cancel never answered"
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        state = run.state
    upgrades = [len(lab.upgrade_log(node["hostname"])) for node in nodes_of(lab, fresh_cluster)]
    assert state == RunState.cancelled and upgrades == [0, 0, 0], (state, upgrades, answers)
