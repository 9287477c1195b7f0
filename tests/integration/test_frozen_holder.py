"""A process that stood still (SIGSTOP, a VM pause) between asking "is the run still mine?" before a
node and that node's upgrade command, while another process took the run over, must not start the
upgrade when it wakes: the new owner carries the node out. Adversarial pass on #14: the holder asked
only before each node, so a freeze in the node's version check let the old owner upgrade it too."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import select

from flows.product_update import product_update
from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from inventory.types import utcnow
from tests.integration.conftest import nodes_of

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"


def test_a_holder_that_lost_the_run_mid_node_never_starts_that_upgrade(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.node import NodeAgent

    engine, real, calls = lab_runtime_any_db.engine, NodeAgent.version, []

    def version(self: NodeAgent) -> str:
        answer = real(self)
        calls.append(self.host)
        # Calls 1-3: pre-flight of the three nodes; 4-5: check and verify of the first node; 6: the
        # second node's check. Here this process "freezes" and another takes the run over.
        if len(calls) == 6:
            with session_scope(engine) as session:
                run = session.exec(select(UpgradeRun).where(UpgradeRun.state == RunState.running)).one()
                until = utcnow() + timedelta(hours=1)
                session.execute(
                    update(UpgradeRun)
                    .where(UpgradeRun.id == run.id)  # type: ignore[arg-type]
                    .values(lease_owner="elsewhere:1/abcdef", lease_until=until, lease_since=utcnow())
                )
        return answer

    monkeypatch.setattr(NodeAgent, "version", version)
    state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)

    assert len(calls) >= 6
    upgrades = [len(lab.upgrade_log(node["hostname"])) for node in nodes_of(lab, fresh_cluster)]
    assert upgrades == [1, 0, 0], "the process that lost the run upgraded a node after losing it"
    assert state.result()["state"] == "taken over"
