"""Controlling runs from the CLI while they run: concurrent updates, pause and resume, approval.

Real `upkeep` processes against the slow lab and the session's Prefect test server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from sqlmodel import col, select

from inventory.db import session_scope
from inventory.models import Cluster, Node, NodeStep, RunState, UpgradeRun
from tests.integration.conftest import cli_engine, upkeep_cli
from tests.support import forkserver
from tests.support.cli import upkeep_in_process

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"


def _start(env: dict[str, str], *args: str) -> Any:
    return forkserver.popen(args, env=env, stdin=None)


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _run(engine: Any, cluster: str) -> UpgradeRun | None:
    with session_scope(engine) as session:
        cluster_id = session.exec(select(Cluster.id).where(Cluster.name == cluster)).one()
        return session.exec(
            select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id).order_by(col(UpgradeRun.id).desc())
        ).first()


def _step_started(engine: Any, run_id: int, position: int, step: str) -> bool:
    with session_scope(engine) as session:
        return (
            session.exec(
                select(NodeStep.id)
                .join(Node, col(Node.id) == col(NodeStep.node_id))
                .where(NodeStep.run_id == run_id, Node.position == position, NodeStep.step == step)
            ).first()
            is not None
        )


def _upgrades(lab: Any, cluster: str) -> list[int]:
    return [len(lab.upgrade_log(n["hostname"])) for n in lab.status()["nodes"] if n["cluster"] == cluster]


def test_two_concurrent_updates_of_one_cluster_exactly_one_runs(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    procs = [_start(slow_cli_env, "update", fresh_slow_cluster, "--to", TARGET) for _ in range(2)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]

    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, _, err in results if code == 1)
    assert f"cluster {fresh_slow_cluster} already has an active update" in refused
    assert "Traceback" not in refused
    assert _upgrades(slow_lab, fresh_slow_cluster) == [1, 1, 1]


def test_pause_finishes_the_node_in_progress_and_resume_completes(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    engine = cli_engine(slow_cli_env)
    # Every node's upgrade holds until cleared, so the pause lands while node 1 is in progress however
    # long `upkeep pause` (a new process) takes to start: before, a slow start let the last node begin
    # and the run ended succeeded (seen in a fresh-clone run under coverage).
    nodes = [n["hostname"] for n in slow_lab.status()["nodes"] if n["cluster"] == fresh_slow_cluster]
    for node in nodes:
        slow_lab.fault(node, "hold-upgrade")
    proc = _start(slow_cli_env, "update", fresh_slow_cluster, "--to", TARGET)
    try:
        run = _wait_for(lambda: _run(engine, fresh_slow_cluster), "the run to be claimed")
        _wait_for(lambda: _step_started(engine, run.id, 1, "upgrade"), "node 1's upgrade to start")
        paused = upkeep_in_process("pause", str(run.id), env=slow_cli_env, check=True)
        assert "pause requested" in paused.stdout
    finally:
        for node in nodes:
            slow_lab.fault(node, "clear")
    assert proc.wait(timeout=120) == 0, proc.communicate()

    # The node in progress when the request landed finishes; nothing after it starts.
    after_pause = _run(engine, fresh_slow_cluster)
    assert after_pause is not None and after_pause.state == RunState.paused
    assert "after 1 of 3 nodes" in after_pause.reason
    assert _upgrades(slow_lab, fresh_slow_cluster) == [1, 0, 0]

    upkeep_cli(slow_cli_env, "resume", str(run.id))
    final = _run(engine, fresh_slow_cluster)
    assert final is not None and final.state == RunState.succeeded
    assert _upgrades(slow_lab, fresh_slow_cluster) == [1, 1, 1]
    engine.dispose()


def _flow_run_paused(flow_run_id: str | None) -> bool:
    """Waiting at its approval gate: Paused, and the question (the input schema) saved. Prefect saves the
    question in a second call after the pause: a process killed in between never asks (CI at stop 34: a
    test killed it there, and its `upkeep approve` was rejected "Run input schema not found")."""
    import httpx
    from prefect.client.orchestration import get_client

    if not flow_run_id:
        return False
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
        if not (state and state.is_paused()):
            return False
        keyset = state.state_details.run_input_keyset
        if not keyset:
            return True
        try:
            client.read_flow_run_input(UUID(flow_run_id), keyset["schema"])
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
            return False
    return True


@pytest.mark.parametrize("answer", ["approve", "refuse"])
def test_approval_gate_waits_for_the_cli(
    answer: str, slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    engine = cli_engine(slow_cli_env)
    proc = _start(slow_cli_env, "update", fresh_slow_cluster, "--to", TARGET, "--require-approval")
    run = _wait_for(lambda: _run(engine, fresh_slow_cluster), "the run to be claimed")
    _wait_for(lambda: _flow_run_paused(_run(engine, fresh_slow_cluster).flow_run_id), "the approval pause")  # type: ignore[union-attr]
    assert _upgrades(slow_lab, fresh_slow_cluster) == [0, 0, 0]  # nothing happens before the answer

    args = ["approve", str(run.id), "--reason", "change ticket CHG-1"]
    upkeep_cli(slow_cli_env, *(args + (["--refuse"] if answer == "refuse" else [])))
    assert proc.wait(timeout=120) == (0 if answer == "approve" else 1), proc.communicate()  # refused: 1

    final = _run(engine, fresh_slow_cluster)
    assert final is not None
    if answer == "approve":
        assert final.state == RunState.succeeded and final.approved_by
        assert _upgrades(slow_lab, fresh_slow_cluster) == [1, 1, 1]
    else:
        assert final.state == RunState.cancelled and final.reason.startswith("approval refused by ")
        assert final.reason.endswith(": change ticket CHG-1")
        assert _upgrades(slow_lab, fresh_slow_cluster) == [0, 0, 0]
    engine.dispose()


def test_pause_at_the_approval_gate_stops_now_and_resume_asks_again(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    """`upkeep pause` of a run waiting for approval: it stops now, paused, no node touched and nothing
    answered (it waited for an answer before). `upkeep resume` brings it back to the gate, which asks
    again; approved then, the update completes."""
    engine = cli_engine(slow_cli_env)
    proc = _start(slow_cli_env, "update", fresh_slow_cluster, "--to", TARGET, "--require-approval")
    run = _wait_for(lambda: _run(engine, fresh_slow_cluster), "the run to be claimed")
    first = _wait_for(lambda: _gate_paused(engine, fresh_slow_cluster), "the approval pause")

    said = upkeep_cli(slow_cli_env, "pause", str(run.id))
    assert "before approval" in said.stdout and "resume" in said.stdout, said.stdout
    assert proc.wait(timeout=60) == 0, proc.communicate()
    paused = _run(engine, fresh_slow_cluster)
    assert paused is not None and paused.state == RunState.paused, paused
    assert paused.reason == "paused by request after 0 of 3 nodes" and not paused.approved_by
    assert _upgrades(slow_lab, fresh_slow_cluster) == [0, 0, 0]
    late = upkeep_cli(slow_cli_env, "approve", str(run.id), "--reason", "CHG-2", check=False)
    assert late.returncode == 1 and late.stderr.count("\n") == 1, late.stderr  # one line, adv33 noticed
    assert f"is paused, not waiting at its approval gate: `upkeep resume {run.id}`" in late.stderr

    again = _start(slow_cli_env, "resume", str(run.id))
    _wait_for(lambda: _gate_paused(engine, fresh_slow_cluster) not in ("", first), "the gate asking again")
    upkeep_cli(slow_cli_env, "approve", str(run.id), "--reason", "change ticket CHG-2")
    assert again.wait(timeout=120) == 0, again.communicate()
    final = _run(engine, fresh_slow_cluster)
    assert final is not None and final.state == RunState.succeeded and final.approved_by
    assert _upgrades(slow_lab, fresh_slow_cluster) == [1, 1, 1]
    engine.dispose()


def _gate_paused(engine: Any, cluster: str) -> str:
    """The flow run id of the run's flow when it is paused (at its approval gate), else ""."""
    run = _run(engine, cluster)
    flow_run_id = run.flow_run_id if run is not None else None
    return flow_run_id or "" if _flow_run_paused(flow_run_id) else ""


def _pause_key(flow_run_id: str | None) -> str:
    """The key of the flow run's pause while it is paused, else ""."""
    from prefect.client.orchestration import get_client

    if not flow_run_id:
        return ""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    return str(state.state_details.pause_key or "") if state is not None and state.is_paused() else ""


def test_an_answer_forging_the_stop_s_name_through_prefect_is_no_decision_and_the_gate_asks_again(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    """The Prefect UI's resume form (here its API) answering as 'upkeep pause/cancel' with no pause or
    cancel pending: no node is touched on it and no decision recorded; the gate pauses again, under a key
    of its own, and `upkeep approve` then answers it."""
    from prefect.flow_runs import resume_flow_run

    from flows.approval import STOPPED_BY

    engine = cli_engine(slow_cli_env)
    proc = _start(slow_cli_env, "update", fresh_slow_cluster, "--to", TARGET, "--require-approval")
    run = _wait_for(lambda: _run(engine, fresh_slow_cluster), "the run to be claimed")
    first = _wait_for(lambda: _pause_key(_run(engine, fresh_slow_cluster).flow_run_id), "the approval pause")  # type: ignore[union-attr]

    flow_run_id = UUID(_run(engine, fresh_slow_cluster).flow_run_id)  # type: ignore[arg-type, union-attr]
    resume_flow_run(flow_run_id, run_input={"approved": True, "approver": STOPPED_BY, "reason": "forged"})
    again = _wait_for(
        lambda: (
            _pause_key(_run(engine, fresh_slow_cluster).flow_run_id) not in ("", first)
            and _pause_key(_run(engine, fresh_slow_cluster).flow_run_id)
        ),  # type: ignore[union-attr]
        "the gate asking again",
    )
    assert again != first
    waiting = _run(engine, fresh_slow_cluster)
    assert waiting is not None and not waiting.approved_by and waiting.state == RunState.running
    assert _upgrades(slow_lab, fresh_slow_cluster) == [0, 0, 0]

    upkeep_cli(slow_cli_env, "approve", str(run.id), "--reason", "change ticket CHG-3")
    assert proc.wait(timeout=120) == 0, proc.communicate()
    final = _run(engine, fresh_slow_cluster)
    assert final is not None and final.state == RunState.succeeded
    assert final.approved_by and final.approved_by != STOPPED_BY
    assert _upgrades(slow_lab, fresh_slow_cluster) == [1, 1, 1]
    engine.dispose()
