"""Faults on the nodes during an update, and access through a jump host. Real lab, real flow."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from flows.product_update import product_update
from inventory.db import session_scope
from inventory.models import Cluster, NodeStep, RunState, UpgradeRun
from tests.integration.conftest import _runtime, nodes_of

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"


def _run(engine: Any, cluster: str) -> UpgradeRun:
    with session_scope(engine) as session:
        cluster_id = session.exec(select(Cluster.id).where(Cluster.name == cluster)).one()
        return session.exec(select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id)).one()


def _upgrades(lab: Any, cluster: str) -> list[int]:
    return [len(lab.upgrade_log(node["hostname"])) for node in nodes_of(lab, cluster)]


def _update_with_fault(lab: Any, cluster: str, position: int, fault: str) -> tuple[Any, str]:
    host = nodes_of(lab, cluster)[position - 1]["hostname"]
    lab.fault(host, fault)
    try:
        return product_update(cluster=cluster, to_version=TARGET, return_state=True), host
    finally:
        lab.fault(host, "clear")


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("down", "cannot connect"), ("disk-full", "bytes free"), ("unhealthy", "not healthy")],
)
def test_preflight_fault_touches_no_node(
    fault: str, expected: str, lab: Any, fresh_cluster: str, lab_runtime: Any
):
    state, host = _update_with_fault(lab, fresh_cluster, 2, fault)

    assert state.is_failed()
    run = _run(lab_runtime.engine, fresh_cluster)
    assert run.state == RunState.failed
    assert (
        "pre-flight failed, no node touched" in run.reason and host in run.reason and expected in run.reason
    )
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]
    with session_scope(lab_runtime.engine) as session:
        steps = {s.step for s in session.exec(select(NodeStep).where(NodeStep.run_id == run.id)).all()}
    assert not steps & {"distribute", "upgrade"}


def test_hang_during_upgrade_times_out_and_later_nodes_are_untouched(
    lab: Any, fresh_cluster: str, lab_runtime: Any
):
    lab_runtime.command_timeout = 2.0
    state, host = _update_with_fault(lab, fresh_cluster, 2, "hang")

    assert state.is_failed()
    run = _run(lab_runtime.engine, fresh_cluster)
    assert host in run.reason and "timed out after 2 s; stopped on the node" in run.reason, run.reason
    assert _upgrades(lab, fresh_cluster) == [1, 0, 0]
    # Stopped, not abandoned: the hung upgrade is gone, so the node's upgrade lock is free again.
    with open(lab.node_dir(host) / ".upgrade.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while the upgrade lives


def test_unhealthy_after_upgrade_halts(lab: Any, fresh_cluster: str, lab_runtime: Any):
    lab_runtime.health_timeout = 1.5
    state, host = _update_with_fault(lab, fresh_cluster, 1, "bad-upgrade")

    assert state.is_failed()
    run = _run(lab_runtime.engine, fresh_cluster)
    assert host in run.reason and "not healthy after 1.5 s" in run.reason
    assert _upgrades(lab, fresh_cluster) == [1, 0, 0]  # the bad node was upgraded; nothing after it


def test_update_through_a_jump_host(jump_lab: Any, sqlite_engine: Any, prefect_harness: None, tmp_path: Path):
    from upkeep.settings import load_settings

    settings = load_settings(home=tmp_path / "home", **jump_lab.settings_overrides())
    for runtime in _runtime(jump_lab, settings, sqlite_engine):
        cluster = jump_lab.status()["nodes"][0]["cluster"]
        with session_scope(sqlite_engine) as session:
            row = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
            assert row.access == "jump" and row.jump_port == jump_lab.status()["jump"]["port"]

        state = product_update(cluster=cluster, to_version=TARGET, return_state=True)

        assert state.is_completed(), state.message
        assert _upgrades(jump_lab, cluster) == [1, 1, 1]
        assert _run(runtime.engine, cluster).state == RunState.succeeded
