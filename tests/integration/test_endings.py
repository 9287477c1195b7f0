"""Every ending told (issue 21): the customer's notice that fits and the SRE's alert, for an approval
refused, a run cancelled mid-way and a failure; with each node's version where it stopped mid-way.
(Carried over: tests/integration/test_windows.py; rollout halted: tests/integration/test_cloud_release.py.)

Real `upkeep` processes against the slow lab and the session's Prefect test server where a person
answers while the run goes on; the flow in-process on the lab for the failure."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import col, select

from flows.product_update import product_update
from flows.schedule import schedule_update
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from inventory.outbox import Notice
from inventory.types import utcnow
from tests.integration.conftest import cli_engine, nodes_of, upkeep_cli
from tests.integration.test_update_control import _flow_run_paused, _run, _start, _step_started, _wait_for
from tests.support.cli import upkeep_in_process
from upkeep.updates import request_stop

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET, FROM = "9.10.0", "9.8.0"


def _customer_notices(engine: Any, run_id: int, kind: str, sre: str) -> list[Notice]:
    with session_scope(engine) as session:
        query = select(Notice).where(col(Notice.update_ref) == f"update-{run_id}", Notice.kind == kind)
        return [n for n in session.exec(query) if sre not in n.recipients]


def _alerts(engine: Any, run_id: int, kind: str) -> list[Alert]:
    with session_scope(engine) as session:
        return list(session.exec(select(Alert).where(Alert.run_id == run_id, Alert.kind == kind)))


def _show(env: dict[str, str], run_id: int) -> dict[str, Any]:
    return json.loads(upkeep_in_process("show", str(run_id), "--json", env=env).stdout)  # type: ignore[no-any-return]


def test_refused_approval_is_told_to_the_customer_with_its_reason_and_alerts_the_sre(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    env, cluster = slow_cli_env, fresh_slow_cluster
    engine = cli_engine(env)
    run_id, proc = _gated_run(env, engine, cluster)

    shown = _show(env, run_id)
    assert (shown["state"], shown["phase"]) == ("running", "awaiting_approval")
    assert {node["result"] for node in shown["nodes"]} == {"pending"}  # nothing touched, not "in progress"
    no_reason = upkeep_in_process("approve", str(run_id), "--refuse", env=env)
    assert no_reason.returncode == 1 and "needs --reason" in no_reason.stderr
    assert _show(env, run_id)["phase"] == "awaiting_approval"  # nothing was answered

    upkeep_cli(env, "approve", str(run_id), "--refuse", "--reason", "freeze for the customer's audit")
    assert proc.wait(timeout=120) == 1, proc.communicate()  # refused: exit 1

    final = _run(engine, cluster)
    assert final is not None and final.state == RunState.cancelled
    assert (
        final.reason.startswith("approval refused by ") and "freeze for the customer's audit" in final.reason
    )
    sre = "sre@localhost"
    [notice] = _customer_notices(engine, run_id, "cancelled", sre)
    assert notice.recipients and all("@" in r for r in notice.recipients)
    assert "not approved: freeze for the customer's audit" in notice.body_text
    assert "Nothing will change on the cluster" in notice.body_text and "METHOD:CANCEL" in notice.ics
    [alert] = _alerts(engine, run_id, "approval-refused")
    assert "freeze for the customer's audit" in alert.body_text
    decisions = _show(env, run_id)["decisions"]
    assert [(d["decision"], d["reason"]) for d in decisions] == [
        ("refused", "freeze for the customer's audit")
    ]
    engine.dispose()


def test_cancel_mid_way_tells_the_customer_which_node_runs_which_version(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    env, cluster = slow_cli_env, fresh_slow_cluster
    engine = cli_engine(env)
    hosts = [node["hostname"] for node in nodes_of(slow_lab, cluster)]
    proc = _start(env, "update", cluster, "--to", TARGET)
    run = _wait_for(lambda: _run(engine, cluster), "the run to be claimed")
    _wait_for(lambda: _step_started(engine, run.id, 1, "upgrade"), "node 1's upgrade to start")

    # What `upkeep cancel RUN --reason` does, in this process: a new process would start too late.
    request_stop(run.id, "cancel", engine=engine, actor="sre", reason="customer asked to stop")
    assert proc.wait(timeout=120) == 0, proc.communicate()
    no_reason = upkeep_in_process("cancel", str(run.id), env=env)
    assert no_reason.returncode == 1 and "needs --reason" in no_reason.stderr

    final = _run(engine, cluster)
    assert (
        final is not None and final.state == RunState.cancelled and "customer asked to stop" in final.reason
    )
    done = [len(slow_lab.upgrade_log(h)) for h in hosts]
    assert done in ([1, 0, 0], [1, 1, 0])  # the node in progress finished; nothing after it started
    expected = [
        f"{h}: {TARGET}" if n else f"{h}: {FROM} (not upgraded)" for h, n in zip(hosts, done, strict=True)
    ]
    [notice] = _customer_notices(engine, run.id or 0, "cancelled", "sre@localhost")
    assert "stopped part-way" in notice.body_text and "customer asked to stop" in notice.body_text
    assert all(line in notice.body_text for line in expected), notice.body_text
    [alert] = _alerts(engine, run.id or 0, "run-cancelled")
    assert all(line in alert.body_text for line in expected), alert.body_text
    engine.dispose()


def test_failure_tells_the_customer_each_nodes_version(lab: Any, fresh_cluster: str, lab_runtime: Any):
    hosts = [node["hostname"] for node in nodes_of(lab, fresh_cluster)]
    lab.fault(hosts[1], "fail-upgrade")
    try:
        state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)
    finally:
        lab.fault(hosts[1], "clear")
    assert state.is_failed()

    with session_scope(lab_runtime.engine) as session:
        run = session.exec(select(UpgradeRun).order_by(col(UpgradeRun.id).desc())).first()
        assert run is not None and run.state == RunState.failed
        run_id = run.id or 0
    [notice] = _customer_notices(lab_runtime.engine, run_id, "failed", lab_runtime.sre_email)
    assert f"{hosts[0]}: {TARGET}" in notice.body_text
    assert f"{hosts[1]}: upgrade did not complete" in notice.body_text
    assert f"{hosts[2]}: {FROM} (not upgraded)" in notice.body_text
    assert "simulated fault" not in notice.body_text  # no internals for the customer
    assert _alerts(lab_runtime.engine, run_id, "run-failed")  # #15's alert, naming the case and bundle


def test_approved_and_refused_at_once_one_answer_counts_and_the_other_is_told(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    """Adversarial pass on #21: two operators answer the approval gate at the same moment, one approving
    and one refusing. Exactly one answer is recorded and acted on; the other exits 1 with one line (no
    traceback), and the run's ending matches the recorded decision."""
    env, cluster = slow_cli_env, fresh_slow_cluster
    engine = cli_engine(env)
    run_id, proc = _gated_run(env, engine, cluster)

    yes = _start(env, "approve", str(run_id), "--reason", "go")
    no = _start(env, "approve", str(run_id), "--refuse", "--reason", "stop")
    answers = {
        "approve": (yes.wait(timeout=120), *yes.communicate()),
        "refuse": (no.wait(timeout=120), *no.communicate()),
    }
    proc.wait(timeout=300)

    for _code, out, err in answers.values():
        assert "Traceback" not in out + err
    assert sorted(code for code, _, _ in answers.values()) == [0, 1], answers
    decisions = _show(env, run_id)["decisions"]
    assert len(decisions) == 1, decisions
    winner = "approve" if answers["approve"][0] == 0 else "refuse"
    assert decisions[0]["reason"] == ("go" if winner == "approve" else "stop")
    final = _run(engine, cluster)
    assert final is not None
    assert final.state == (RunState.succeeded if winner == "approve" else RunState.cancelled)
    engine.dispose()


def _gated_run(env: dict[str, str], engine: Any, cluster: str) -> tuple[int, Any]:
    """An announced update (a `scheduled` notice) needing approval, resumed and waiting at its gate."""
    with session_scope(engine) as session:
        run = schedule_update(
            cluster, TARGET, now=utcnow(), source="customer", requested_by="t", session=session
        )
        run.needs_approval = True
        session.flush()
        run_id = run.id or 0
    proc = _start(env, "resume", str(run_id))  # the lab's windows are always open
    _wait_for(lambda: _flow_run_paused(_run(engine, cluster).flow_run_id), "the approval pause")  # type: ignore[union-attr]
    return run_id, proc


def _answers(env: dict[str, str], run_id: int) -> list[tuple[str, str]]:
    """The approval gate's answers among the run's decisions (a cancel is one too)."""
    decisions = _show(env, run_id)["decisions"]
    return [(d["decision"], d["reason"]) for d in decisions if d["decision"] in ("approved", "refused")]


def _steps(engine: Any, run_id: int) -> list[str]:
    from inventory.models import NodeStep

    with session_scope(engine) as session:
        return list(session.exec(select(NodeStep.step).where(NodeStep.run_id == run_id)))


def test_cancel_at_the_approval_gate_ends_the_run_now_and_a_later_approval_is_refused(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    """An SRE cancels a run waiting for approval. The cancel was only recorded ("the node in progress
    finishes first") and nothing happened until someone approved (the package was then copied, and only
    then did the run stop) or the gate timed out, hours later. Now it ends at once, cancelled as a
    cancel is, the Prefect flow run no longer paused; an approval after it is refused with one line."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    env, cluster = slow_cli_env, fresh_slow_cluster
    engine = cli_engine(env)
    hosts = [node["hostname"] for node in nodes_of(slow_lab, cluster)]
    run_id, proc = _gated_run(env, engine, cluster)

    said = upkeep_cli(env, "cancel", str(run_id), "--reason", "customer froze changes")
    assert "before approval" in said.stdout, said.stdout
    assert proc.wait(timeout=60) == 0, proc.communicate()  # ended now, not at the approval timeout

    final = _run(engine, cluster)
    assert final is not None and final.state == RunState.cancelled
    assert final.reason.startswith("cancelled by ") and final.reason.endswith(
        ": customer froze changes (after 0 of 3 nodes)"
    ), final.reason
    assert final.approved_by in (None, "")
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(final.flow_run_id or "")).state
    assert state is not None and state.is_final() and not state.is_paused(), state
    assert [len(slow_lab.upgrade_log(h)) for h in hosts] == [0, 0, 0]
    assert "distribute" not in _steps(engine, run_id)  # the package was not copied first
    [notice] = _customer_notices(engine, run_id, "cancelled", "sre@localhost")
    assert "customer froze changes" in notice.body_text and "METHOD:CANCEL" in notice.ics
    [alert] = _alerts(engine, run_id, "run-cancelled")
    assert "customer froze changes" in alert.body_text
    assert _answers(env, run_id) == []  # the gate was not answered

    late = upkeep_in_process("approve", str(run_id), "--reason", "go ahead", env=env)
    assert late.returncode == 1 and "Traceback" not in late.stdout + late.stderr
    assert late.stderr.strip().count("\n") == 0 and str(run_id) in late.stderr, late.stderr
    assert _run(engine, cluster).state == RunState.cancelled  # type: ignore[union-attr]
    engine.dispose()


def test_approved_and_cancelled_at_once_one_takes_the_gate_and_the_other_is_told(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    """An approval and a cancel at the same moment: the run's row orders them. The cancel first: the gate
    stops unanswered and the approval is refused (exit 1, one line). The approval first: it is recorded,
    and the cancel is told the gate was answered already; it is honoured before any further node. Either
    way the run ends cancelled and exactly one of them answered the gate."""
    env, cluster = slow_cli_env, fresh_slow_cluster
    engine = cli_engine(env)
    run_id, proc = _gated_run(env, engine, cluster)

    yes = _start(env, "approve", str(run_id), "--reason", "go")
    stop = _start(env, "cancel", str(run_id), "--reason", "customer froze changes")
    approve = (yes.wait(timeout=120), *yes.communicate())
    cancel = (stop.wait(timeout=120), *stop.communicate())
    assert proc.wait(timeout=300) == 0, proc.communicate()

    for _code, out, err in (approve, cancel):
        assert "Traceback" not in out + err
    assert cancel[0] == 0, cancel
    decisions = _answers(env, run_id)
    if approve[0] == 0:  # the approval took the gate; the cancel was told
        assert decisions == [("approved", "go")]
        assert "it was approved" in cancel[1], cancel
    else:  # the cancel took the gate; the approval was refused with one line
        assert approve[0] == 1 and "came first" in approve[2] and approve[2].strip().count("\n") == 0
        assert decisions == [], decisions
        assert "before approval" in cancel[1], cancel
    final = _run(engine, cluster)
    assert final is not None and final.state == RunState.cancelled, final
    assert "customer froze changes" in final.reason
    engine.dispose()


def test_refused_while_the_gate_s_process_was_dead_the_resume_ends_it_refused_told_once(
    slow_lab: Any, slow_cli_env: dict[str, str], fresh_slow_cluster: str
):
    """kill -9 of the process waiting at the gate (it waits for days: the likeliest place for a crash).
    Prefect still takes `upkeep approve --refuse` for the dead pause, and the refusal is recorded; a cancel
    after it is refused ("it ends cancelled"). The resume then asked for approval again: the refusal
    lost, the refused update waiting for an answer (adversarial pass adv33). Now the resume ends it
    refused, no node touched: the customer told once, the SRE alerted once, the decision shown once."""
    import signal

    env, cluster = slow_cli_env, fresh_slow_cluster
    engine = cli_engine(env)
    hosts = [node["hostname"] for node in nodes_of(slow_lab, cluster)]
    run_id, proc = _gated_run(env, engine, cluster)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL

    refused = upkeep_in_process("approve", str(run_id), "--refuse", "--reason", "not this week", env=env)
    assert refused.returncode == 0 and f"run {run_id} refused" in refused.stdout, refused
    cancel = upkeep_in_process("cancel", str(run_id), "--reason", "customer froze changes", env=env)
    assert cancel.returncode == 1 and "it ends cancelled" in cancel.stderr, cancel
    assert "Traceback" not in cancel.stdout + cancel.stderr

    resumed = _start(env, "resume", str(run_id))
    try:
        code = resumed.wait(timeout=90)  # not at the gate again, waiting for an answer
    finally:
        asked_again = _flow_run_paused(_run(engine, cluster).flow_run_id)  # type: ignore[union-attr]
        resumed.kill()
    assert not asked_again and code == 1, resumed.communicate()  # refused: 1, as at a live gate

    final = _run(engine, cluster)
    assert final is not None and final.state == RunState.cancelled, final
    assert final.reason.startswith("approval refused by ") and final.reason.endswith(": not this week")
    assert [len(slow_lab.upgrade_log(h)) for h in hosts] == [0, 0, 0]
    [notice] = _customer_notices(engine, run_id, "cancelled", "sre@localhost")
    assert "not this week" in notice.body_text
    assert len(_alerts(engine, run_id, "approval-refused")) == 1
    assert _answers(env, run_id) == [("refused", "not this week")]
    engine.dispose()
