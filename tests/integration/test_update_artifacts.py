"""What the Prefect UI shows of a finished update: the progress artifact moved on per node, naming how
each node ended, and one summary artifact that carries the node table - read back through the API of
the real Prefect test server, after a real update on the lab."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

from flows.product_update import product_update
from flows.report import markdown_table, summary_key
from tests.integration.conftest import nodes_of

TARGET = "9.10.0"


@pytest.mark.lab
@pytest.mark.prefect
def test_a_finished_update_shows_each_node_in_the_progress_and_the_node_table_in_the_summary(
    lab: Any, fresh_cluster: str, lab_runtime: Any
) -> None:
    hosts = [node["hostname"] for node in nodes_of(lab, fresh_cluster)]
    state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    APILogHandler().flush()  # the logs are sent in batches from a worker thread
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))

    assert sorted(a.type or "" for a in artifacts) == ["markdown", "progress"]
    progress = next(a for a in artifacts if a.type == "progress")
    assert progress.data == 100.0
    assert progress.description is not None
    assert [line for line in progress.description.splitlines() if line.startswith("- ")] == [
        f"- {host}: 9.8.0→{TARGET}" for host in hosts
    ]

    summary = next(a for a in artifacts if a.type == "markdown")
    assert summary.key == summary_key(_customer(lab_runtime, fresh_cluster), fresh_cluster)
    text = str(summary.data)
    assert "- nodes: 3, upgraded: 3" in text and ": succeeded" in text
    assert re.search(r"Upkeep run: \*\*(\d+)\*\* \(succeeded\); inspect with `upkeep show \1`", text)
    assert "| node | before | after | seconds | result |" in text
    for host in hosts:
        row = rf"^\| {host} \| 9\.8\.0 \| {re.escape(TARGET)} \| [0-9.]+ \| upgraded \|$"
        assert re.search(row, text, re.M), text

    # The per-node lines stay on the console: the progress artifact already shows them in the UI.
    messages = [log.message for log in logs]
    assert any(message.startswith("run ") for message in messages), messages
    assert not any(message.startswith(f"{host}: ") for host in hosts for message in messages), messages


@pytest.mark.lab
@pytest.mark.prefect
def test_a_failed_update_tells_its_cause_in_the_header_and_its_story_in_the_cluster_summary(
    lab: Any, fresh_cluster: str, lab_runtime: Any
) -> None:
    hosts = [node["hostname"] for node in nodes_of(lab, fresh_cluster)]
    lab.fault(hosts[1], "fail-upgrade")
    try:
        state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True, source="support")
    finally:
        lab.fault(hosts[1], "clear")
    assert state.is_failed()
    # The run header: the one-line cause, not "Flow run encountered an exception" and a traceback.
    assert state.message is not None and state.message.startswith(f"{hosts[1]}: "), state.message
    assert "simulated fault" in state.message and "\n" not in state.message
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    customer = _customer(lab_runtime, fresh_cluster)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        flow_run = client.read_flow_run(flow_run_id)

    (summary,) = [a for a in artifacts if a.type == "markdown"]
    assert summary.key == f"update-{customer}-{fresh_cluster}".lower()
    text = str(summary.data)
    assert ": FAILED" in text and "**Cause:** " in text and "simulated fault" in text
    assert f"**Stopped at:** node `{hosts[1]}`, step `upgrade`" in text
    upgraded = rf"^\| {hosts[0]} \| 9\.8\.0 \| {re.escape(TARGET)} \| [0-9.]+ \| upgraded \|$"
    assert re.search(upgraded, text, re.M)
    assert re.search(rf"^\| {hosts[2]} \|  \|  \|  \| not reached \|$", text, re.M), text
    assert re.search(r"- case: CASE-\d+", text) and "- diagnostics: https://127.0.0.1" in text
    assert {f"customer:{customer}", f"cluster:{fresh_cluster}", "source:support"} <= set(flow_run.tags)


def _customer(runtime: Any, cluster: str) -> str:
    from inventory import repo
    from inventory.db import session_scope

    with session_scope(runtime.engine) as session:
        return repo.customer_of(repo.get_cluster(cluster, session=session), session=session).name


def test_markdown_table_cells_cannot_break_the_table() -> None:
    rows = [{"node": "n1", "result": "failed at upgrade: a | b\nc", "seconds": None}]

    assert markdown_table(rows, ("node", "seconds", "result")) == [
        "| node | seconds | result |",
        "|---|---|---|",
        "| n1 |  | failed at upgrade: a \\| b c |",
    ]
