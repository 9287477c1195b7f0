"""Retry in the Prefect UI on a failed product-update flow run: the same flow run runs again, resumes
its Upkeep run from our record (no node upgraded twice), and on success the case its failure opened
gets a note with the link and is closed. Real lab, real flow, the Prefect test server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.states import AwaitingRetry
from sqlmodel import col, select

from flows.failed_run_case import case_links
from flows.product_update import product_update
from inventory import cases
from inventory.db import session_scope
from inventory.models import AuditEvent, Cluster, RunState, UpgradeRun
from tests.integration.conftest import nodes_of
from upkeep.updates import show_run

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"


def _runs(engine: Any, cluster: str) -> list[UpgradeRun]:
    with session_scope(engine) as session:
        cluster_id = session.exec(select(Cluster.id).where(Cluster.name == cluster)).one()
        return list(session.exec(select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id)).all())


def test_retry_from_the_ui_resumes_the_run_and_closes_the_case_its_failure_opened(
    lab: Any, fresh_cluster: str, lab_runtime: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = [node["hostname"] for node in nodes_of(lab, fresh_cluster)]
    lab.fault(hosts[1], "fail-upgrade")
    try:
        failed = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)
    finally:
        lab.fault(hosts[1], "clear")
    assert failed.is_failed()
    (run,) = _runs(lab_runtime.engine, fresh_cluster)
    with session_scope(lab_runtime.engine) as session:
        (opened,) = session.exec(
            select(AuditEvent).where(
                AuditEvent.action == "run.case_opened", AuditEvent.subject == f"run/{run.id}"
            )
        ).all()
    ref = opened.detail["case"]
    assert opened.detail["flow_run_url"].endswith(
        f"/runs/flow-run/{run.flow_run_id}"
    )  # the case links the run

    flow_run_id = failed.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, AwaitingRetry(), force=True)  # what Retry in the UI does
        flow_run = client.read_flow_run(flow_run_id)
    retried = run_flow(product_update, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")

    assert retried.is_completed(), retried.message
    (again,) = _runs(lab_runtime.engine, fresh_cluster)  # the same Upkeep run, not a new one
    assert (again.id, again.state, again.flow_run_id) == (run.id, RunState.succeeded, run.flow_run_id)
    assert [len(lab.upgrade_log(host)) for host in hosts] == [1, 1, 1]  # each node upgraded once in all
    with session_scope(lab_runtime.engine) as session:
        case = cases.get_case(ref, session=session)
        links = case_links(ref, session=session)
        retried_audit = session.exec(
            select(AuditEvent).where(AuditEvent.action == "run.retried").order_by(col(AuditEvent.id))
        ).all()
    assert (
        case.status is cases.CaseStatus.closed
        and f"run {run.id} was retried and succeeded" in case.close_reason
    )
    (note,) = links["notes"]
    assert f"/runs/flow-run/{run.flow_run_id}" in note["note"]
    assert [r["run"] for r in links["runs"]] == [run.id]
    assert [e.subject for e in retried_audit] == [f"run/{run.id}"]
    capsys.readouterr()
    show_run(run.id or 0, engine=lab_runtime.engine, as_json=True)  # `upkeep show RUN --json`
    shown = json.loads(capsys.readouterr().out)
    assert (
        shown["flow_run_url"].endswith(f"/runs/flow-run/{run.flow_run_id}") and shown["state"] == "succeeded"
    )
