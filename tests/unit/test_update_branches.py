"""The product-update flow's branches with fakes at its protocol boundary (tests/support/fakes.py):
a failure at each runbook step, pause, cancel, carry-over to the next window, and a take-over by
another process (a failed run also opens its case and collects diagnostics, through the same fakes),
without the lab's sshd nodes, nginx or a Prefect server.

What is real: the flow's code and decisions, the SQLite record, the scheduling rules, the notices.
What is fake: the nodes (`FakeFleet`), the file server, mail, the clock, and Prefect's engine (flows and
tasks called as plain functions, tests/support/flow_engine.py). The same branches run under the real
Prefect engine against the real lab in tests/integration (test_product_update.py,
test_update_control.py, test_windows.py, test_takeover.py); these pin the flow's decisions themselves."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows import runtime as flow_runtime
from inventory.db import session_scope
from inventory.models import RequestedAction, RunState, UpgradeRun
from inventory.repo import get_cluster
from tests.support.fakes import FakeNode
from tests.support.flow_engine import prefect_in_process
from tests.support.races import meanwhile
from tests.support.runs import planned_run
from tests.support.update_world import CLUSTER, FROM, HOSTS, MONDAY, PACKAGE, TARGET, World


@contextmanager
def _world(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Iterator[World]:
    made = World(engine, tmp_path, **kwargs)
    flow_runtime.configure(made.runtime)
    try:
        with prefect_in_process(monkeypatch):
            yield made
    finally:
        flow_runtime.configure(None)


@pytest.fixture
def world(sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with _world(sqlite_engine, tmp_path, monkeypatch) as made:
        yield made


def test_every_node_upgraded_once_over_one_connection_each(world: World) -> None:
    state = world.update()

    assert state.is_completed(), state.message
    assert world.run().state == RunState.succeeded
    assert world.upgraded() == [1, 1, 1]
    assert [node.version for node in world.nodes] == [TARGET] * 3
    assert world.fleet.connected == dict.fromkeys(HOSTS, 1)
    assert all(runner.closed for runner in world.fleet.runners)
    assert world.notices(world.run().id) == ["started", "completed"]


def _unreachable_download(w: World) -> None:
    w.files.failing[PACKAGE] = "connection to https://files.example failed: refused"


def _corrupt_package(w: World) -> None:
    w.files.files[PACKAGE] = b"not the package the catalog names"


def _unhealthy(w: World) -> None:
    w.nodes[1].healthy = False


def _wrong_version(w: World) -> None:
    w.nodes[2].version = "9.8.0"


def _unreachable_node(w: World) -> None:
    w.fleet.unreachable.add(HOSTS[0])


def _stage_fails(w: World) -> None:
    w.nodes[2].fail["stage"] = (3, "No space left on device")


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (_unreachable_download, "connection to https://files.example failed"),
        (_corrupt_package, "SHA-256 is"),
        (_unhealthy, f"pre-flight failed, no node touched: {HOSTS[1]}: not healthy"),
        (_wrong_version, f"pre-flight failed, no node touched: {HOSTS[2]}: at 9.8.0, expected 9.9.0"),
        (_unreachable_node, f"pre-flight failed, no node touched: {HOSTS[0]}: cannot connect"),
        (_stage_fails, f"distribute failed, no node upgraded: {HOSTS[2]}: stage failed (exit 3)"),
    ],
    ids=["download", "checksum", "preflight-health", "preflight-version", "preflight-ssh", "distribute"],
)
def test_a_failure_before_any_node_touches_none_and_tells_the_customer_nothing(
    world: World, fault: Any, said: str
) -> None:
    fault(world)

    state = world.update()

    assert state.is_failed()
    run = world.run()
    assert run.state == RunState.failed and run.active_cluster_id is None
    assert said in run.reason
    assert world.upgraded() == [0, 0, 0]
    assert world.notices(run.id) == []  # vendor-side: the customer was never told it started


def _upgrade_fails(node: FakeNode) -> None:
    node.fail["upgrade"] = (1, "upgrade failed: simulated fault")


def _never_healthy(node: FakeNode) -> None:
    node.healthy_after_upgrade = False


def _wrong_version_after(node: FakeNode) -> None:
    node.reports_after_upgrade = "9.9.5"


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (_upgrade_fails, "upgrade to 9.10.0 failed (exit 1): upgrade failed: simulated fault"),
        (_never_healthy, "not healthy after 0.2 s"),
        (_wrong_version_after, "reports 9.9.5 after the upgrade, expected 9.10.0"),
    ],
    ids=["upgrade", "health", "verify"],
)
def test_a_failure_on_the_second_node_stops_the_run_there(world: World, fault: Any, said: str) -> None:
    fault(world.nodes[1])

    state = world.update()

    assert state.is_failed()
    run = world.run()
    assert run.state == RunState.failed
    assert f"{HOSTS[1]}: " in run.reason and said in run.reason
    assert [node.version for node in world.nodes][::2] == [TARGET, FROM]  # node 3 never touched
    assert ["upgrade", TARGET] not in world.nodes[2].commands
    assert world.notices(run.id) == ["started", "failed"]


def test_pause_is_honoured_after_the_node_in_progress_and_resume_finishes_the_rest(world: World) -> None:
    world.ask_at_node_1("pause")

    state = world.update()

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.paused and "paused by request after 1 of 3 nodes" in run.reason
    assert world.upgraded() == [1, 0, 0]
    world.nodes[0].before.clear()

    resumed = world.update(run_id=run.id)

    assert resumed.is_completed(), resumed.message
    assert world.run().state == RunState.succeeded
    assert world.upgraded() == [1, 1, 1]  # node 1 not upgraded again


def test_a_resume_while_the_stopped_process_s_node_restarts_waits_for_it_instead_of_failing(
    world: World,
) -> None:
    """kill -9 in the middle of node 2's upgrade: the node finishes it on its own and restarts. An SRE's
    `upkeep resume` at once found it `starting` at pre-flight and failed the run - a failure notice to
    the customer and an SRE alert over an update that was going fine. A node this run began upgrading
    gets the health wait its own health step gives it (found by the adversarial pass on test_crash)."""

    run = world.left_mid_upgrade_of_node_2()
    restarting = world.nodes[1]
    restarting.version, restarting.healthy = TARGET, False  # upgraded by the orphaned command, starting
    answers: list[bool] = []

    def comes_up(node: FakeNode) -> None:  # called before each answer: `starting` once, then healthy
        node.healthy = bool(answers)
        answers.append(node.healthy)

    restarting.before["health"] = comes_up
    world.runtime.health_timeout = 30.0  # the outcome is the count of answers, never the clock

    resumed = world.update(run_id=run.id)

    assert resumed.is_completed(), resumed.message
    assert world.run().state == RunState.succeeded
    assert answers[:2] == [False, True]  # pre-flight asked again instead of failing the run
    assert world.upgraded() == [1, 0, 1]  # node 2 not upgraded again: found at the target
    assert "failed" not in world.notices(run.id)


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_a_pause_or_cancel_during_the_resume_s_settle_wait_ends_the_wait_and_is_honoured(
    world: World, action: str
) -> None:
    """The resumed run waits (pre-flight) for the node the stopped process was upgrading; it never comes
    up. An SRE's pause/cancel meanwhile was honoured only after the whole wait (600 s in production),
    and then the run failed "not healthy" - a failure notice and a page instead of the stop asked for.
    Now the wait asks between its answers: it ends, and the run ends paused/cancelled, no node touched."""
    from upkeep.updates import request_stop

    run = world.left_mid_upgrade_of_node_2()
    answers: list[bool] = []

    def never_up_and_stopped_at_the_second_answer(node: FakeNode) -> None:
        node.healthy = False
        answers.append(node.healthy)
        if len(answers) == 2:
            assert run.id is not None
            request_stop(run.id, action, engine=world.engine, actor="sre", reason="customer asked")

    world.nodes[1].before["health"] = never_up_and_stopped_at_the_second_answer
    world.runtime.health_timeout = 8.0  # without the stop's check the run fails "not healthy" after it

    resumed = world.update(run_id=run.id)

    assert resumed.is_completed(), resumed.message
    ended = world.run()
    assert len(answers) == 2, answers  # no answer asked after the stop
    if action == "pause":
        assert (ended.state, ended.reason) == (RunState.paused, "paused by request after 1 of 3 nodes")
        assert ended.requested_action == RequestedAction.none
    else:
        assert ended.state == RunState.cancelled
        assert ended.reason == "cancelled by sre: customer asked (after 1 of 3 nodes)"
    assert world.upgraded() == [1, 0, 0]  # no further node touched
    assert "failed" not in world.notices(run.id)
    assert world.notices(run.id)[-1] == ("cancelled" if action == "cancel" else "started")


def test_the_database_away_for_a_moment_during_the_resume_s_settle_wait_does_not_fail_the_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settle wait (up to 600 s) now asks the database for a pause/cancel between its answers. Asked
    while the database was away for longer than inventory.db waits (a failover), the read's error became
    the node's pre-flight problem: the resumed run failed, the customer was told it failed and the SRE
    alerted, over a node that came up a moment later (adversarial pass adv33). The stop is a wish the run
    also reads after the pre-flight: a read that fails here is "not asked", and the wait goes on."""
    from sqlalchemy.exc import OperationalError

    from flows import steps

    run = world.left_mid_upgrade_of_node_2()
    restarting = world.nodes[1]
    restarting.version, restarting.healthy = TARGET, False
    answers: list[bool] = []

    def comes_up_at_the_third_answer(node: FakeNode) -> None:
        node.healthy = len(answers) >= 2
        answers.append(node.healthy)

    restarting.before["health"] = comes_up_at_the_third_answer
    asked: list[int] = []
    real = steps.stop_requested

    def away_at_first(engine: Engine, run_id: int) -> str:
        asked.append(run_id)
        if len(asked) == 1:  # what retrying raises once the outage outlasts DB_OUTAGE_SECONDS
            raise OperationalError(
                "SELECT requested_action",
                {},
                Exception("server closed the connection"),
                connection_invalidated=True,
            )
        return real(engine, run_id)

    monkeypatch.setattr(steps, "stop_requested", away_at_first)
    world.runtime.health_timeout = 30.0  # the outcome is the count of answers, never the clock

    resumed = world.update(run_id=run.id)

    assert asked, "the settle wait never asked for a stop"
    assert resumed.is_completed(), resumed.message
    assert world.run().state == RunState.succeeded
    assert answers[:3] == [False, False, True]  # waited on past the failed read
    assert world.upgraded() == [1, 0, 1]
    assert "failed" not in world.notices(run.id)


def _with_flow_run(world: World, run_id: int | None, flow_run_id: str) -> None:
    """The run's Prefect flow run id, as a gate's process records it (a made-up one: Prefect is faked)."""
    with session_scope(world.engine) as session:
        session.execute(
            update(UpgradeRun).where(col(UpgradeRun.id) == run_id).values(flow_run_id=flow_run_id)
        )


class _Killed(BaseException):
    """The flow's process killed (kill -9, the machine lost) while its approval gate waited."""


@pytest.mark.parametrize("taken_by", ["the dispatcher", "upkeep resume"])
def test_a_refusal_given_while_the_gate_s_process_was_dead_stands_when_the_run_is_taken_over(
    world: World, monkeypatch: pytest.MonkeyPatch, taken_by: str
) -> None:
    """The gate's process dies while it waits (hours: the likeliest place for a crash). `upkeep approve
    --refuse` still answers (Prefect accepts a resume of the dead process's pause) and now records the
    refusal as the run's reason, under the row lock; `upkeep cancel` is then refused ("it ends cancelled").
    But nothing ended it: the take-over (or an SRE's resume) wiped the reason as a dead process's words,
    and the gate asked the question again - the refused update waiting for an approval, the operator's
    cancel refused in between (adversarial pass adv33). The refusal stands: the run ends cancelled by it."""
    from flows import approval
    from flows.lease import take_over
    from inventory.runs import refusal
    from upkeep.console import CliError
    from upkeep.updates import approve_run, request_stop

    gates: list[int] = []

    def dies_waiting(**_kwargs: Any) -> Any:
        gates.append(1)
        if len(gates) > 1:
            raise AssertionError("the refused run asked for approval again")
        raise _Killed

    monkeypatch.setattr(approval, "pause_flow_run", dies_waiting)
    with pytest.raises(_Killed):
        world.update(require_approval=True)
    run = world.run()
    assert run.id is not None and run.state == RunState.running and gates == [1]
    # the flow run it was (Prefect's, still paused there)
    _with_flow_run(world, run.id, "00000000-0000-0000-0000-000000000001")
    monkeypatch.setattr("flows.approval.resume_flow_run", lambda *_args, **_kwargs: None)
    said = approve_run(run.id, engine=world.engine, approved=False, reason="not this week", actor="op")
    assert said.startswith(f"run {run.id} refused; ") and "is not answering" in said, said  # lease ran out
    with pytest.raises(CliError, match="it ends cancelled"):
        request_stop(run.id, "cancel", engine=world.engine, actor="sre", reason="customer asked")
    with session_scope(world.engine) as session:  # the dead process's lease ran out
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run.id)
            .values(lease_until=MONDAY - timedelta(days=1))
        )
    if taken_by == "the dispatcher":
        with session_scope(world.engine) as session:
            stale = session.get(UpgradeRun, run.id)
            assert stale is not None
            owner = "dispatcher-test"
            assert take_over(
                session, stale, now=world.runtime.clock(), owner=owner,
                until=world.runtime.clock() + timedelta(hours=1), actor="dispatcher",
            )  # fmt: skip
        resumed = world.update(run_id=run.id, lease_owner=owner)
    else:
        resumed = world.update(run_id=run.id)

    assert resumed.is_completed(), resumed.message
    assert gates == [1], "the refused run asked for approval again"
    ended = world.run()
    assert ended.state == RunState.cancelled
    assert ended.reason == refusal("op", "not this week")
    assert world.upgraded() == [0, 0, 0]
    assert _decisions(world, run.id) == [("refused", "op", "not this week")]  # `upkeep show` says who


@pytest.mark.parametrize("holder", ["alive", "gone"])
def test_an_approval_the_gate_never_asked_for_says_who_asks_again(
    world: World, monkeypatch: pytest.MonkeyPatch, holder: str
) -> None:
    """adv62: `upkeep approve` in the gap between the gate's pause and its question, which outlasts the
    patience (GATE_PATIENCE): the line said "its process stopped in that moment: killed?; the take-over
    asks again" whatever the lease said. With the holder's lease live and its process seen (slow: the
    question's save retried by Prefect's client under load), no take-over comes: the gate asks itself a
    moment later and waits for an answer the operator was told the take-over would ask for. Said as the
    lease rules read it: the holder alive, answer again once it asks; gone, the take-over asks again."""
    from flows import approval
    from upkeep.console import CliError
    from upkeep.updates import approve_run

    def dies_waiting(**_kwargs: Any) -> Any:
        raise _Killed

    monkeypatch.setattr(approval, "pause_flow_run", dies_waiting)
    with pytest.raises(_Killed):
        world.update(require_approval=True)
    run = world.run()
    assert run.id is not None and run.state == RunState.running
    until = world.runtime.clock() + timedelta(hours=1) if holder == "alive" else MONDAY - timedelta(days=1)
    with session_scope(world.engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run.id)
            .values(flow_run_id="00000000-0000-0000-0000-000000000001", lease_until=until)
        )

    def no_question(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("Cannot resume this run: Run input schema not found.")

    monkeypatch.setattr("flows.approval.resume_flow_run", no_question)
    monkeypatch.setattr(approval, "GATE_PATIENCE", 0.0)
    with pytest.raises(CliError) as refused:
        approve_run(run.id, engine=world.engine, approved=True, reason="CHG-1", actor="op")
    said = str(refused.value)

    assert said.startswith(f"run {run.id}: its gate paused but") and "not approved" in said, said
    if holder == "alive":
        assert "take-over" not in said and "killed" not in said, said
        assert f"answer again once `upkeep show {run.id}` says it waits for approval" in said, said
    else:
        assert "is not answering: the dispatcher's next take-over asks again" in said, said
    assert world.run().approved_by == "" and _decisions(world, run.id) == []


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_killed_between_the_gate_s_wake_and_the_stop_s_ending_the_take_over_ends_it_once(
    world: World, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """kill -9 after the watcher woke the gate for a pause/cancel and before the flow recorded the stop:
    the dispatcher's take-over honours the stop before the gate (no question asked again, no node
    touched), the SRE alerted once for a cancel, the customer (never told of the update) told nothing."""
    from flows import approval
    from flows.lease import take_over
    from inventory.alerts import Alert
    from upkeep.updates import request_stop

    gates: list[int] = []

    def woken_then_killed(**_kwargs: Any) -> Any:
        gates.append(1)
        if len(gates) > 1:
            raise AssertionError("the stopped run asked for approval again")
        run_id = world.run().id
        assert run_id is not None
        request_stop(run_id, action, engine=world.engine, actor="sre", reason="customer asked")
        raise _Killed  # Prefect's pause resumed by the watcher; the process gone before it read why

    monkeypatch.setattr(approval, "pause_flow_run", woken_then_killed)
    with pytest.raises(_Killed):
        world.update(require_approval=True)
    run = world.run()
    assert run.id is not None and run.state == RunState.running and run.requested_action == action
    with session_scope(world.engine) as session:
        stale = session.get(UpgradeRun, run.id)
        assert stale is not None
        stale.lease_until = MONDAY - timedelta(days=1)
        session.add(stale)
    with session_scope(world.engine) as session:
        stale = session.get(UpgradeRun, run.id)
        assert stale is not None
        now = world.runtime.clock()
        assert take_over(
            session, stale, now=now, owner="dispatcher-t", until=now + timedelta(hours=1), actor="d"
        )

    resumed = world.update(run_id=run.id, lease_owner="dispatcher-t")

    assert resumed.is_completed(), resumed.message
    ended = world.run()
    if action == "cancel":
        assert ended.state == RunState.cancelled
        assert ended.reason == "cancelled by sre: customer asked (after 0 of 3 nodes)"
    else:
        assert (ended.state, ended.reason) == (RunState.paused, "paused by request after 0 of 3 nodes")
    assert gates == [1] and world.upgraded() == [0, 0, 0]
    assert world.notices(run.id) == []
    with session_scope(world.engine) as session:
        alerts = list(session.exec(select(Alert.kind).where(Alert.run_id == run.id)))
    assert alerts == (["run-cancelled"] if action == "cancel" else [])


def test_a_ui_approval_prefect_took_over_a_cli_refusal_leaves_the_running_run_cancellable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`upkeep approve --refuse` (alice) and an approval in the Prefect UI (bob) at once: Prefect's resume
    is not atomic, so both can be accepted and the gate reads bob's. The run went on to its nodes with
    alice's refusal left as its reason, and `upkeep cancel` was then refused ('it was refused at its
    approval gate: it ends cancelled') while nodes were being upgraded (adversarial pass adv33). The
    approval the gate acted on clears the refusal; the cancel is honoured after the node in progress."""
    from upkeep.updates import request_stop

    _both_answered(world, monkeypatch, cli_approves=False, kept=(True, "bob", "CHG-9"))
    said: list[str] = []

    def cancel_during_node_1(_node: FakeNode) -> None:
        run_id = world.run().id
        assert run_id is not None
        said.append(request_stop(run_id, "cancel", engine=world.engine, actor="sre", reason="customer asked"))

    world.nodes[0].before["upgrade"] = cancel_during_node_1

    state = world.update(require_approval=True)

    assert state.is_completed(), state.message
    run = world.run()
    assert said and "cancel requested" in said[0], said
    assert run.state == RunState.cancelled and run.approved_by == "bob"
    assert run.reason == "cancelled by sre: customer asked (after 1 of 3 nodes)"
    assert world.upgraded() == [1, 0, 0]


def test_a_ui_refusal_prefect_took_over_a_cli_approval_ends_the_run_refused_and_not_approved(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mirror of the race above: `upkeep approve` (alice, recorded as approved_by) and a refusal in
    the Prefect UI (bob) both accepted, the gate acting on bob's. The run ended cancelled by the refusal
    with approved_by still 'alice' (`upkeep show`: approved, and refused). The refusal the gate acts on
    clears it."""
    _both_answered(world, monkeypatch, cli_approves=True, kept=(False, "bob", "not today"))

    state = world.update(require_approval=True)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.cancelled and run.reason == "approval refused by bob: not today"
    assert run.approved_by == ""
    assert world.upgraded() == [0, 0, 0]


def test_approve_at_a_gate_that_paused_but_never_asked_is_one_line_and_records_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate's process killed between Prefect's two calls (the pause, then the question's form): the
    server rejects every answer ("Run input schema not found"). `upkeep approve` said "no longer waiting
    for approval (...; another answer came first, or the wait timed out)"; now it says what happened, after
    asking again for GATE_PATIENCE (the real gap: tests/integration/test_gate_question.py), and records
    nothing: the take-over asks the question again."""
    from flows import approval
    from upkeep.console import CliError
    from upkeep.updates import approve_run

    def dies_waiting(**_kwargs: Any) -> Any:
        raise _Killed

    monkeypatch.setattr(approval, "pause_flow_run", dies_waiting)
    with pytest.raises(_Killed):
        world.update(require_approval=True)
    run = world.run()
    assert run.id is not None
    _with_flow_run(world, run.id, "00000000-0000-0000-0000-000000000005")
    answers: list[dict[str, object]] = []

    def never_asked(_flow_run_id: Any, run_input: dict[str, object]) -> None:
        answers.append(run_input)
        raise RuntimeError("Cannot resume this run: Run input schema not found.")

    monkeypatch.setattr(approval, "resume_flow_run", never_asked)
    monkeypatch.setattr(approval, "GATE_PATIENCE", 0.25)
    with pytest.raises(CliError) as said:
        approve_run(run.id, engine=world.engine, approved=False, reason="not this week", actor="op")
    line = str(said.value)
    assert "has not asked its question after 0.25 s" in line and "not refused" in line, line
    assert "another answer came first" not in line and "\n" not in line, line
    assert len(answers) > 1  # asked again before giving up
    after = world.run()
    assert after.state == RunState.running and after.reason == "" and after.approved_by == "", after
    assert _decisions(world, run.id) == []


def _both_answered(
    world: World, monkeypatch: pytest.MonkeyPatch, *, cli_approves: bool, kept: tuple[bool, str, str]
) -> None:
    """At the gate, `upkeep approve` by alice (approving or refusing, "CHG-9" / "not today") and an answer
    in the Prefect UI both accepted by Prefect; the gate reads the UI's, `kept` (approved, by, reason)."""
    from flows import approval
    from upkeep.updates import approve_run

    def both_answers(**_kwargs: Any) -> Any:
        run_id = world.run().id
        assert run_id is not None
        _with_flow_run(world, run_id, "00000000-0000-0000-0000-000000000004")
        reason = "CHG-9" if cli_approves else "not today"
        approve_run(run_id, engine=world.engine, approved=cli_approves, reason=reason, actor="alice")
        approved, by, why = kept
        return approval.Approval(approved=approved, approver=by, reason=why)  # the one Prefect kept

    monkeypatch.setattr(approval, "pause_flow_run", both_answers)
    monkeypatch.setattr("flows.approval.resume_flow_run", lambda *_args, **_kwargs: None)


def _decisions(world: World, run_id: int) -> list[tuple[str, str, str]]:
    from inventory.run_report import decisions

    with session_scope(world.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        return [(taken["decision"], taken["by"], taken["reason"]) for taken in decisions(run, session)]


@pytest.mark.parametrize("approved", [True, False])
def test_an_answer_by_upkeep_approve_to_a_live_gate_is_one_decision(
    world: World, monkeypatch: pytest.MonkeyPatch, approved: bool
) -> None:
    """`upkeep approve` records its answer (and the decision) itself; the gate it wakes reads the same
    answer from Prefect and must not record the decision a second time."""
    from flows import approval
    from upkeep.updates import approve_run

    def answered_by_upkeep_approve(**_kwargs: Any) -> Any:
        run = world.run()
        assert run.id is not None
        _with_flow_run(world, run.id, "00000000-0000-0000-0000-000000000002")
        approve_run(run.id, engine=world.engine, approved=approved, reason="ok by me", actor="op")
        return approval.Approval(approved=approved, approver="op", reason="ok by me")

    monkeypatch.setattr(approval, "pause_flow_run", answered_by_upkeep_approve)
    monkeypatch.setattr("flows.approval.resume_flow_run", lambda *_args, **_kwargs: None)

    state = world.update(require_approval=True)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.id is not None
    assert run.state == (RunState.succeeded if approved else RunState.cancelled)
    assert _decisions(world, run.id) == [("approved" if approved else "refused", "op", "ok by me")]


def test_a_node_the_run_never_touched_that_is_not_healthy_still_fails_the_resume_at_pre_flight(
    world: World,
) -> None:
    """The wait is for the node the stopped process was upgrading, not for any unhealthy node: node 3,
    untouched, unhealthy, fails the resumed run's pre-flight at its first answer."""
    world.ask_at_node_1("pause")
    assert world.update().is_completed()
    run = world.run()
    world.nodes[0].before.clear()
    world.nodes[2].healthy = False
    world.nodes[2].commands.clear()
    world.runtime.health_timeout = 30.0

    resumed = world.update(run_id=run.id)

    assert resumed.is_failed()
    # Node 1 was upgraded before the pause: "no node touched" would be untrue.
    assert str(resumed.message).startswith(
        f"resumed run's pre-flight failed, no further node touched: {HOSTS[2]}: not healthy ("
    ), resumed.message
    assert sum(command == ["health"] for command in world.nodes[2].commands) == 1
    assert world.upgraded() == [1, 0, 0]


def test_the_resume_s_wait_is_for_this_run_s_unverified_upgrade_only(world: World) -> None:
    """Node 1 was upgraded and verified before the pause, then the customer's own change left it unhealthy;
    node 3 was begun by another, older run of the cluster (its record says nothing about this one). Neither
    is the stopped process's node settling: both fail the resumed run's pre-flight at their first answer.
    A rule that waited for every node ever begun (no verify, or no run) stayed green (adversarial pass
    adv32)."""
    from inventory.models import Node, NodeStep, StepState

    with session_scope(world.engine) as session:  # an older run that began node 3's upgrade and failed
        cluster = get_cluster(CLUSTER, session=session)
        older = planned_run(session, cluster, slot_start=MONDAY, slot_end=MONDAY + timedelta(hours=1))
        older.state, older.active_cluster_id = RunState.failed, None
        node_3 = session.exec(select(Node.id).where(Node.hostname == HOSTS[2])).one()
        session.add(NodeStep(run_id=older.id, node_id=node_3, step="upgrade", state=StepState.failed))
    run = world.paused_after_node_1()
    assert run.id != older.id
    answers: dict[str, list[bool]] = {HOSTS[0]: [], HOSTS[2]: []}

    def unhealthy_once(node: FakeNode) -> None:  # unhealthy at the first answer, healthy at any later one
        node.healthy = bool(answers[node.hostname])
        answers[node.hostname].append(node.healthy)

    for node in (world.nodes[0], world.nodes[2]):
        node.before["health"] = unhealthy_once
    world.runtime.health_timeout = 3600.0  # a wait ends at the second answer: the count says, not a clock

    resumed = world.update(run_id=run.id)

    assert answers == {HOSTS[0]: [False], HOSTS[2]: [False]}, answers
    assert resumed.is_failed()
    assert str(resumed.message).startswith("resumed run's pre-flight failed, no further node touched: ")
    assert world.upgraded() == [1, 0, 0]


def test_a_resumed_run_s_pre_flight_that_finds_a_support_tunnel_closed_does_not_say_no_node_touched(
    world: World,
) -> None:
    """Node 1 was upgraded before the pause; the customer then closed node 3's support tunnel. The resumed
    run's pre-flight said "pre-flight failed, no node touched" for a closed tunnel - the untruth the
    other problems' message no longer says - and that is the failure the SRE reads (outside the window
    the run fails with it) while node 1 runs the new version (adversarial pass adv32)."""
    from dataclasses import replace

    from flows.plan import TunnelServer, plan_update
    from flows.steps import NodeConnections, TunnelDown, preflight_step
    from tasks.ssh import TunnelClosed

    run = world.paused_after_node_1()

    def tunnel_closed(node: FakeNode) -> None:
        raise TunnelClosed(node.hostname, "the support tunnel is not open")

    world.nodes[2].before["version"] = tunnel_closed
    with session_scope(world.engine) as session:
        plan = plan_update(CLUSTER, TARGET, session=session)
    conns = NodeConnections(world.runtime, plan)  # the fake fleet's direct connections
    behind_tunnels = replace(
        plan, tunnel=TunnelServer("tunnels.vendor.example", 22, "tunnel", "ssh-ed25519 AAAA")
    )
    try:
        with pytest.raises(TunnelDown) as raised:
            preflight_step.fn(behind_tunnels, run.id, world.runtime, conns, 1)
    finally:
        conns.close()

    assert raised.value.closed == (HOSTS[2],)
    assert str(raised.value).startswith("resumed run's pre-flight failed, no further node touched: "), (
        raised.value
    )


def test_the_dispatcher_s_reminder_pre_flight_does_not_wait_for_a_node_left_mid_upgrade(world: World) -> None:
    """A run carried over with a node's upgrade left open (its support tunnel closed under it) gets a 72 h
    reminder before its next window: the dispatcher's tick asks the pre-flight (flows.dispatch
    `_preflight_summary`) with the run's id. The resume's health wait for that node held the whole tick for
    up to health_timeout (600 s in production) on an unhealthy node, every other run's start and notice
    behind it; the reminder reports what it finds at one look (adversarial pass adv32)."""
    from flows.dispatch import _preflight_summary
    from inventory.models import Node, NodeStep, StepState

    world.ask_at_node_1("pause")
    assert world.update().is_completed()
    run = world.run()
    world.nodes[0].before.clear()
    with session_scope(world.engine) as session:  # node 2's upgrade left open when the run stopped
        node_2 = session.exec(select(Node.id).where(Node.hostname == HOSTS[1])).one()
        session.add(
            NodeStep(
                run_id=run.id, node_id=node_2, step="upgrade", state=StepState.interrupted, detail=TARGET
            )
        )
    answers: list[bool] = []

    def unhealthy_once(node: FakeNode) -> None:  # unhealthy at the first answer, healthy at any later one
        node.healthy = bool(answers)
        answers.append(node.healthy)

    world.nodes[1].before["health"] = unhealthy_once
    world.runtime.health_timeout = 3600.0  # a wait ends at the second answer: the count says, not a clock

    summary = _preflight_summary(world.runtime, run)  # type: ignore[arg-type]

    assert answers == [False], answers
    assert summary.startswith("FAILED: ") and f"{HOSTS[1]}: not healthy (" in summary, summary


def test_cancel_is_honoured_after_the_node_in_progress_and_the_customer_told(world: World) -> None:
    world.ask_at_node_1("cancel", reason="customer asked")

    state = world.update()

    run = world.run()
    assert state.is_completed(), state.message
    assert run.state == RunState.cancelled
    assert run.reason == "cancelled by sre: customer asked (after 1 of 3 nodes)"
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run.id) == ["started", "cancelled"]


def test_a_paused_run_cancelled_ends_there_and_the_customer_is_told_which_node_runs_which_version(
    world: World,
) -> None:
    """`upkeep cancel` of a run no flow is carrying out (paused here): it ends at once, told like a
    cancel between nodes; pausing it again first is a no-op, and nothing pauses or cancels it after."""
    from inventory.outbox import Notice
    from upkeep.console import CliError
    from upkeep.updates import request_stop

    world.ask_at_node_1("pause")
    world.update()
    run = world.run()
    assert run.id is not None and run.state == RunState.paused
    world.nodes[0].before.clear()

    def ask(action: str, reason: str = "") -> str:
        assert run.id is not None
        return request_stop(run.id, action, engine=world.engine, actor="sre", reason=reason)

    assert ask("pause") == f"run {run.id} is already paused"
    assert world.run().requested_action == RequestedAction.none  # nothing queued for a flow not there
    assert ask("cancel", "customer asked") == (
        f"run {run.id} cancelled; the customer is told (if the update was announced)"
    )

    ended = world.run()
    assert ended.state == RunState.cancelled
    assert ended.reason == "cancelled by sre: customer asked (while paused)"
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run.id) == ["started", "cancelled"]
    with session_scope(world.engine) as session:
        query = select(Notice).where(
            col(Notice.update_ref).startswith(f"update-{run.id}"), Notice.kind == "cancelled"
        )
        [notice] = session.exec(query).all()
    assert "customer asked" in notice.body_text
    assert (
        f"{HOSTS[0]}: {TARGET}" in notice.body_text
        and f"{HOSTS[1]}: {FROM} (not upgraded)" in notice.body_text
    )
    for action in ("pause", "cancel"):
        with pytest.raises(CliError, match=f"run {run.id} is cancelled: it cannot be"):
            ask(action, "again")


ONCALL = {
    "timezone": "UTC",
    "handover": "09:00",
    "rotation": "weekly",
    "starts": "2026-11-30",
    "engineers": [
        {"name": "Ana", "email": "ana@vendor.example"},
        {"name": "Ben", "email": "ben@vendor.example"},
    ],
    "team_lead": {"name": "Tess", "email": "tess@vendor.example"},
    "escalation": [{"name": "Max", "email": "max@vendor.example", "role": "support manager"}],
}


def _urgent_run(world: World) -> int:
    from tests.support.runs import planned_run

    with session_scope(world.engine) as session:
        cluster = get_cluster(CLUSTER, session=session)
        run = planned_run(session, cluster, slot_start=MONDAY, slot_end=MONDAY + timedelta(hours=4))
        run.urgent = True
        session.add(run)
        assert run.id is not None
        return run.id


@pytest.mark.parametrize("urgent", [True, False])
def test_a_failed_urgent_update_pages_the_engineer_on_call_and_the_team_lead_at_any_hour(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, urgent: bool
) -> None:
    """Monday 00:00 UTC, the middle of the night: an urgent update failing on its second node pages Ana
    (on call this week) and Tess (team lead), once, with how to acknowledge; a routine one pages no one
    (the SRE's alert is enough)."""
    from inventory.alerts import Alert, Page

    with _world(sqlite_engine, tmp_path, monkeypatch, oncall=ONCALL) as world:
        run_id = _urgent_run(world) if urgent else None
        world.nodes[1].before["upgrade"] = _upgrade_fails

        state = world.update(run_id=run_id) if run_id else world.update()

        run = world.run()
        assert state.is_failed(), state.message
        assert run.state == RunState.failed and world.upgraded() == [1, 0, 0]
        assert run.urgent is urgent
        with session_scope(world.engine) as session:
            pages = session.exec(select(Page)).all()
            paging = session.exec(select(Alert).where(Alert.kind == "page")).all()
        if not urgent:
            assert (pages, paging) == ([], [])
            return
        [paged] = pages
        assert (paged.key, paged.level, paged.paged) == (f"run:{run.id}", 0, ["Ana", "Tess"])
        assert paged.escalate_at is not None and paged.escalate_at > MONDAY  # unacknowledged, it climbs
        [alert] = paging
        assert (
            alert.subject
            == f"[Upkeep] fakeco/{CLUSTER}: PAGE: URGENT update run {run.id} failed at {HOSTS[1]}"
        )
        assert alert.targets == ["ana@vendor.example", "tess@vendor.example"]
        assert f"upkeep oncall ack {paged.id}" in alert.body_text

        # The same failure seen again (a retry of the ending) pages no one twice.
        from flows.outcomes import page_if_urgent

        page_if_urgent(world.runtime, run.id or 0, "again", "again")
        with session_scope(world.engine) as session:
            assert len(session.exec(select(Page)).all()) == 1


def _planned_monday(world: World) -> int:
    """A customer's update planned in Monday's window (00:00-01:00 with `short_window`), announced: its
    'scheduled' notice queued, as flows/schedule.py does (a carry-over or a stall tells only a customer
    who was told of the update, flows/endings.py `customer_knows`)."""
    from flows.run_notices import VendorTerms, queue_run_notice

    with session_scope(world.engine) as session:
        run = planned_run(
            session, get_cluster(CLUSTER, session=session), to_version=TARGET, source="customer",
            slot_start=MONDAY, slot_end=MONDAY + timedelta(minutes=30),
        )  # fmt: skip
        assert run.id is not None
        told = MONDAY - timedelta(days=7)
        vendor = VendorTerms.from_runtime(world.runtime)
        assert queue_run_notice(run, "scheduled", session=session, now=told, vendor=vendor)
        return run.id


def _five_minutes_left(world: World) -> Callable[[FakeNode], None]:
    """A node hook: 55 minutes pass (from 00:00, 5 are left of the hour; a node needs 10)."""

    def late(_node: FakeNode) -> None:
        world.clock.advance(timedelta(minutes=55))

    return late


ONE_HOUR = {"days": "mon-sun", "start": "00:00", "duration": "1h"}  # every day's window, 00:00-01:00 UTC


@pytest.fixture
def short_window(sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with _world(sqlite_engine, tmp_path, monkeypatch, window=ONE_HOUR) as made:
        yield made


@pytest.fixture
def short_window_any_db(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """`short_window` on each database (SQLite and PostgreSQL)."""
    with _world(engine, tmp_path, monkeypatch, window=ONE_HOUR) as made:
        yield made


def test_a_window_closing_carries_the_rest_over_to_the_next_window(short_window: World) -> None:
    world = short_window
    run_id = _planned_monday(world)
    # 55 minutes pass while node 1 upgrades: 5 are left, a node needs 10.
    world.nodes[0].before["upgrade"] = _five_minutes_left(world)

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.planned
    assert run.slot_start == MONDAY + timedelta(days=1)
    assert run.reason.startswith("partially done (1 of 3 nodes)")
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run_id)[-2:] == ["partial", "rescheduled"]


def test_a_resumed_run_whose_pre_flight_ends_past_the_cutoff_does_not_say_nothing_was_changed(
    short_window: World,
) -> None:
    """Paused after node 1, resumed in its window; its pre-flight (a settle wait, up to health_timeout)
    ends with 5 minutes left. The after-gate check carried it over telling the customer "Nothing was
    changed on your cluster" and the SRE "nothing changed on any node" while node 1 ran 9.10.0 (adv35).
    Told now as the window's end between nodes is: 'partial' with each node's version, then 'rescheduled'."""
    from inventory.outbox import Notice

    world = short_window
    run_id = _planned_monday(world)
    world.paused_after_node_1(run_id=run_id)
    # the resume's pre-flight takes until 5 minutes are left of the hour (a node needs 10)
    world.nodes[0].before["disk"] = _five_minutes_left(world)

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.planned and run.slot_start == MONDAY + timedelta(days=1)
    assert world.upgraded() == [1, 0, 0]
    assert "nothing changed" not in run.reason.lower(), run.reason
    assert run.reason.startswith("partially done (1 of 3 nodes)"), run.reason
    assert world.notices(run_id)[-2:] == ["partial", "rescheduled"]
    with session_scope(world.engine) as session:
        bodies = session.exec(
            select(Notice.body_text).where(col(Notice.update_ref).startswith(f"update-{run_id}"))
        )
        assert not [body for body in bodies if "Nothing was changed" in body]


def test_a_run_carried_over_with_a_node_s_upgrade_interrupted_does_not_say_support_is_checking_it(
    short_window: World,
) -> None:
    """Node 2's upgrade interrupted (its process killed); the run is taken over late in the window and
    its pre-flight waits for node 2 to settle until no node fits: carried over, 'partial' told. Its node
    list said "fake-c1-n2: upgrade did not complete; our support team is checking this node" while no
    case was opened and the SRE's 'carried-over' alert asked for nothing: no one was checking (adv37).
    The node is asked its state when the update continues, and the customer reads that."""
    from inventory.outbox import Notice

    world = short_window
    run_id = _planned_monday(world)
    world.left_mid_upgrade_of_node_2(run_id=run_id)
    world.nodes[1].version = TARGET  # its upgrade finished on its own
    world.nodes[0].before["disk"] = _five_minutes_left(world)

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    assert world.run().state == RunState.planned
    assert world.notices(run_id)[-2:] == ["partial", "rescheduled"]
    with session_scope(world.engine) as session:
        query = select(Notice.body_text).where(
            Notice.update_ref == f"update-{run_id}", Notice.kind == "partial"
        )
        [told] = session.exec(query).all()
    assert "support team is checking" not in told, told
    assert f"{HOSTS[1]}: upgrade interrupted; its state is checked when the update continues" in told, told


def test_a_run_taken_over_past_the_cutoff_with_every_node_done_is_recorded_succeeded_not_carried_over(
    short_window: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies right after node 3's verification, before recording the success (kill -9, its
    machine lost), 5 minutes before the window ends; the dispatcher takes the run over once its lease ran
    out. The take-over found no room in the window after its pre-flight and carried a finished update over
    ('partial' told, "partially done (3 of 3 nodes)", a run planned for the next window with nothing
    to do) where it recorded it succeeded before (adv35). No node left to start: the cutoff has nothing
    to stop."""
    world = short_window
    run_id = _planned_monday(world)

    def the_take_over_comes_5_minutes_before_the_end() -> None:
        world.clock.advance(timedelta(minutes=55))

    world.killed_before_recording_success(
        monkeypatch, as_it_dies=the_take_over_comes_5_minutes_before_the_end, run_id=run_id
    )

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    ended = world.run()
    assert ended.state == RunState.succeeded, (ended.state, ended.reason)
    assert world.upgraded() == [1, 1, 1]
    assert world.notices(run_id) == ["scheduled", "started", "completed"]


def test_a_copy_of_the_package_that_ends_past_the_cutoff_says_nothing_was_changed_not_started(
    short_window: World,
) -> None:
    """The window had room after pre-flight, but copying the package to the nodes (a large package, a
    slow link, or a support tunnel closed under the copy and waited for) took until 5 minutes were left.
    The run told the customer 'started', then carried over at node 1 as 'partially done (0 of 3 nodes)'
    (adv35). It is carried over after the copy, before 'started': nothing was changed on their cluster
    (a staged package changes nothing they run)."""
    world = short_window
    run_id = _planned_monday(world)
    world.nodes[2].before["stage"] = _five_minutes_left(world)

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    ended = world.run()
    assert ended.state == RunState.planned and ended.slot_start == MONDAY + timedelta(days=1)
    assert "no room left" in ended.reason and "0 of 3" not in ended.reason, ended.reason
    assert world.upgraded() == [0, 0, 0]
    assert world.notices(run_id) == ["scheduled", "rescheduled"]


def test_a_run_taken_over_during_a_copy_that_outlasts_the_window_is_left_to_its_new_owner(
    short_window: World,
) -> None:
    """Another process takes the run over while this one copies the package (its lease ran out: the
    copy stood still), and the copy ends past the cutoff: this process carried the run over (its
    record, the customer's 'rescheduled' notice) under its new owner, who tells its own story (adv35)."""
    world = short_window
    run_id = _planned_monday(world)

    def taken_over_late(_node: FakeNode) -> None:
        world.clock.advance(timedelta(minutes=55))
        with world.engine.begin() as conn:
            conn.execute(
                update(UpgradeRun)
                .where(col(UpgradeRun.id) == run_id)
                .values(lease_owner="elsewhere:1/abc", lease_until=world.clock() + timedelta(minutes=5))
            )

    world.nodes[2].before["stage"] = taken_over_late

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    assert state.result()["state"] == "taken over"
    ended = world.run()
    assert ended.state == RunState.running and ended.lease_owner == "elsewhere:1/abc"
    assert world.notices(run_id) == ["scheduled"]


@pytest.mark.parametrize("action", ["cancel", "pause"])
@pytest.mark.parametrize("where", ["between nodes", "after pre-flight"])
def test_a_stop_that_lands_as_the_window_ends_is_honoured_not_carried_over(
    short_window: World, monkeypatch: pytest.MonkeyPatch, where: str, action: str
) -> None:
    """`upkeep cancel` committed just after the run's last look for a stop and just before its cutoff
    check carries it over: the run went back to `planned` with the cancel still pending and its reason
    overwritten; the customer was sent 'rescheduled' for an update the SRE had cancelled, and the
    dispatcher never claims a planned run with a stop pending (adv35). A pause alike. Now carry_over
    reads the run under its row's lock and a stop recorded there is honoured instead."""
    from flows import product_update as update_flow
    from upkeep.updates import request_stop

    world = short_window
    run_id = _planned_monday(world)
    late = (world.nodes[0], "upgrade" if where == "between nodes" else "disk")
    late[0].before[late[1]] = _five_minutes_left(world)
    real = update_flow.window_closing

    def stopped_as_it_looks(runtime: Any, looked_at: int) -> bool:
        if closing := real(runtime, looked_at):  # the stop commits right after this look
            request_stop(run_id, action, engine=world.engine, actor="sre", reason="customer asked")
        return closing

    monkeypatch.setattr(update_flow, "window_closing", stopped_as_it_looks)

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    ended = world.run()
    done = 1 if where == "between nodes" else 0
    if action == "cancel":
        assert ended.state == RunState.cancelled, (ended.state, ended.reason)
        assert ended.reason == f"cancelled by sre: customer asked (after {done} of 3 nodes)", ended.reason
    else:
        assert ended.state == RunState.paused, (ended.state, ended.reason)
        assert ended.reason == f"paused by request after {done} of 3 nodes", ended.reason
    assert ended.requested_action == RequestedAction.none or action == "cancel"
    assert "rescheduled" not in world.notices(run_id)
    assert world.upgraded() == [done, 0, 0]


def _windows_removed_at_node_1(world: World, tmp_path: Path, step: str = "upgrade") -> None:
    """While node 1 upgrades (or takes `step`), 55 minutes pass and an inventory import removes the
    cluster's windows: no further node fits, and no later window exists."""
    import yaml

    from inventory.importer import import_inventory

    def late_and_gone(node: FakeNode) -> None:
        _five_minutes_left(world)(node)
        inventory = tmp_path / "inventory.yaml"
        document = yaml.safe_load(inventory.read_text())
        document["customers"][0]["clusters"][0]["windows"] = []
        inventory.write_text(yaml.safe_dump(document, sort_keys=False))
        import_inventory(inventory, engine=world.engine, actor="test")

    world.nodes[0].before[step] = late_and_gone


def test_a_run_mid_way_with_no_later_window_fails_told_to_the_customer_and_the_sre_s_alert(
    short_window: World, tmp_path: Path
) -> None:
    """Node 1 upgraded, the customer told 'started'; at the window's end no later window fits (an
    import removed the windows). carry_over ended the run failed with only an e-mail to the SRE's
    address: the customer never heard their cluster was left on mixed versions, no run-failed alert,
    no case, no page for an urgent update (adv37). A failure once a node was touched is told as any
    other: the customer's 'failed' with each node's version, the run-failed alert and its case."""
    from inventory.alerts import Alert
    from inventory.outbox import Notice

    world = short_window
    run_id = _planned_monday(world)
    _windows_removed_at_node_1(world, tmp_path)

    state = world.update(run_id=run_id)

    assert state.is_failed(), state.message
    ended = world.run()
    assert ended.state == RunState.failed and "no later window fits" in ended.reason, ended.reason
    assert world.upgraded() == [1, 0, 0]
    with session_scope(world.engine) as session:
        told = session.exec(select(Notice).where(Notice.update_ref == f"update-{run_id}")).all()
        alerts = session.exec(select(Alert.kind).where(Alert.run_id == run_id)).all()
    assert [notice.kind for notice in told] == ["scheduled", "started", "failed"]
    assert f"{HOSTS[0]}: {TARGET}" in told[-1].body_text and f"{HOSTS[1]}: {FROM}" in told[-1].body_text
    assert "run-failed" in alerts, alerts


def test_an_urgent_update_left_with_no_window_pages_as_a_failed_urgent_update(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An urgent update (a security fix) whose pre-flight ends past the cutoff, no later window fitting
    (an import removed the windows): carry_over ended it failed with an e-mail to the SRE's address and
    paged no one, where "a failed urgent update pages the engineer on call and the team lead, at any
    hour" (flows/outcomes.page_if_urgent; adv37). Nothing was touched: the customer is still told
    nothing."""
    from inventory.alerts import Page

    with _world(sqlite_engine, tmp_path, monkeypatch, window=ONE_HOUR, oncall=ONCALL) as world:
        run_id = _planned_monday(world)
        with session_scope(world.engine) as session:
            session.execute(update(UpgradeRun).where(col(UpgradeRun.id) == run_id).values(urgent=True))
        _windows_removed_at_node_1(world, tmp_path, step="disk")

        state = world.update(run_id=run_id)

        ended = world.run()
        assert ended.state == RunState.failed and "no later window fits" in ended.reason, ended.reason
        assert world.upgraded() == [0, 0, 0]
        assert world.notices(run_id) == ["scheduled", "failed"]  # the announcement, then the SRE's only
        with session_scope(world.engine) as session:
            [paged] = session.exec(select(Page)).all()
        assert (paged.key, paged.paged) == (f"run:{run_id}", ["Ana", "Tess"])
        assert state.is_failed(), state.message


def test_a_cancel_waiting_for_the_carry_over_s_row_lock_cancels_the_carried_over_run(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`upkeep cancel` arrives while carry_over holds the run's row (on PostgreSQL seen waiting for that
    lock): it waits, then finds the run planned for the next window and cancels it there, withdrawn and
    told. Never a run left planned with the cancel pending, nor 'cancelled' before 'rescheduled'."""
    import threading

    from sqlalchemy import event

    from flows import outcomes
    from upkeep.updates import request_stop

    with _world(engine, tmp_path, monkeypatch, window=ONE_HOUR) as world:
        run_id = _planned_monday(world)
        world.nodes[0].before["upgrade"] = _five_minutes_left(world)
        said: list[str] = []
        pids: list[int] = []

        def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            if threading.current_thread().name == "cancel" and engine.dialect.name == "postgresql":
                pids.append(dbapi_conn.info.backend_pid)

        event.listen(engine, "checkout", on_checkout)

        def cancel() -> None:
            said.append(request_stop(run_id, "cancel", engine=engine, actor="sre", reason="froze"))

        def cancel_arrives() -> threading.Thread:
            other = threading.Thread(target=cancel, name="cancel")
            other.start()
            _seen_waiting_for_the_row(engine, pids)
            return other

        arrived = meanwhile(monkeypatch, outcomes, "_release_deadline", cancel_arrives)  # the row is held

        state = world.update(run_id=run_id)
        arrived[0].join(timeout=60)

        assert state.is_completed(), state.message
        assert said == [f"run {run_id} cancelled; the customer is told (if the update was announced)"]
        ended = world.run()
        assert (ended.state, ended.requested_action) == (RunState.cancelled, RequestedAction.none)
        assert ended.reason == "cancelled by sre: froze (while planned)", ended.reason
        assert world.notices(run_id) == ["scheduled", "started", "partial", "rescheduled", "cancelled"]
        assert world.upgraded() == [1, 0, 0]


def test_a_cancel_after_a_pending_pause_as_the_window_ends_is_honoured_as_the_cancel(
    short_window_any_db: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SRE pauses as the window ends, then thinks better of it and cancels (`upkeep cancel` is
    accepted over a pending pause). carry_over read the pause under the row's lock, let the lock go,
    and `stop` wrote the pause it was handed: the run ended paused, its cancel gone, the customer never
    told (adv37). The stop is decided on what the row says when it is written (on each database: `stop`
    now takes the row's lock)."""
    from flows import outcomes
    from flows import product_update as update_flow
    from upkeep.updates import request_stop

    world = short_window_any_db
    run_id = _planned_monday(world)
    world.nodes[0].before["upgrade"] = _five_minutes_left(world)
    real_closing = update_flow.window_closing

    def paused_as_it_looks(runtime: Any, looked_at: int) -> bool:
        if closing := real_closing(runtime, looked_at):  # the pause commits right after this look
            request_stop(run_id, "pause", engine=world.engine, actor="sre")
        return closing

    monkeypatch.setattr(update_flow, "window_closing", paused_as_it_looks)
    # carry_over saw the pause under the lock and let it go: the cancel commits before `stop` writes
    cancelled = meanwhile(
        monkeypatch,
        outcomes,
        "stop",
        lambda: request_stop(run_id, "cancel", engine=world.engine, actor="sre", reason="customer asked"),
    )

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    assert cancelled == [f"run {run_id}: cancel requested; the node in progress finishes first"]
    ended = world.run()
    assert ended.state == RunState.cancelled, (ended.state, ended.reason)
    assert ended.reason == "cancelled by sre: customer asked (after 1 of 3 nodes)", ended.reason
    assert world.notices(run_id)[-1] == "cancelled"
    assert world.upgraded() == [1, 0, 0]


@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_a_stop_asked_of_a_run_whose_every_node_was_verified_records_it_succeeded(
    world: World, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """The process dies after node 3's verification, before recording the success; the on-call SRE sees
    a run stuck 'running' and cancels it (or pauses it). The dispatcher's take-over honoured the stop:
    "cancelled (after 3 of 3 nodes)", the customer sent 'cancelled' for an update complete on every node,
    and the inventory left at the old version (adv37). A live run asked to cancel during its last node
    records it succeeded; so does the take-over, as it does past the cutoff (adv35): nothing is left to
    stop."""
    from flows.lease import take_over
    from upkeep.updates import request_stop

    run = world.killed_before_recording_success(monkeypatch)
    assert run.id is not None
    request_stop(run.id, action, engine=world.engine, actor="sre", reason="stuck; customer asked")
    with session_scope(world.engine) as session:  # the dead process's lease ran out; the dispatcher's
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run.id)
            .values(lease_until=MONDAY - timedelta(days=1))
        )
        stale = session.get(UpgradeRun, run.id)
        assert stale is not None
        now = world.runtime.clock()
        assert take_over(session, stale, now=now, owner="disp", until=now + timedelta(hours=1), actor="d")

    state = world.update(run_id=run.id, lease_owner="disp")

    assert state.is_completed(), state.message
    ended = world.run()
    assert ended.state == RunState.succeeded, (ended.state, ended.reason)
    assert world.notices(run.id) == ["started", "completed"]
    with session_scope(world.engine) as session:
        assert get_cluster(CLUSTER, session=session).version == TARGET


def test_a_run_taken_over_meanwhile_is_left_to_its_new_owner(world: World) -> None:
    def taken_over(_node: FakeNode) -> None:  # another process took the run while node 1 upgraded
        run_id = world.run().id
        with world.engine.begin() as conn:
            conn.execute(
                update(UpgradeRun)
                .where(col(UpgradeRun.id) == run_id)
                .values(lease_owner="elsewhere:1/abc", lease_until=world.clock() + timedelta(minutes=5))
            )

    world.nodes[0].before["upgrade"] = taken_over

    state = world.update()

    assert state.is_completed(), state.message
    assert state.result()["state"] == "taken over"
    run = world.run()
    assert run.state == RunState.running and run.lease_owner == "elsewhere:1/abc"  # not ours to end
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run.id) == ["started"]  # no ending told by the process that lost the run


@pytest.mark.parametrize("action", ["pause", "cancel", "pause honoured by its owner"])
def test_a_stop_at_the_gate_of_a_run_taken_over_meanwhile_is_left_to_its_new_owner(
    world: World, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """The gate waits for days; its process stood still (frozen, or the database away longer than the
    lease) and the dispatcher took the run over. A pause/cancel then wakes this process's gate too, and it
    ended the run - paused or cancelled 'after 0 of 3 nodes', the customer told - while the new owner
    carried it out: the stops honoured before the first node did not ask, as the node loop does, whether
    the run was still this process's (adversarial pass adv33). Not ours: left to its owner, who honours it."""
    from flows import approval
    from inventory.alerts import Alert
    from upkeep.updates import request_stop

    def taken_over_then_stopped(**_kwargs: Any) -> Any:
        run_id = world.run().id
        assert run_id is not None
        with world.engine.begin() as conn:
            conn.execute(
                update(UpgradeRun)
                .where(col(UpgradeRun.id) == run_id)
                .values(lease_owner="elsewhere:1/abc", lease_until=world.clock() + timedelta(minutes=5))
            )
        request_stop(run_id, action.split()[0], engine=world.engine, actor="sre", reason="customer asked")
        if action == "pause honoured by its owner":  # before this process's gate read why it woke
            with world.engine.begin() as conn:
                conn.execute(
                    update(UpgradeRun)
                    .where(col(UpgradeRun.id) == run_id)
                    .values(state=RunState.paused, requested_action="", reason="paused by its owner")
                )
        return approval.Approval(approved=False, approver=approval.STOPPED_BY)  # the watcher's wake

    monkeypatch.setattr(approval, "pause_flow_run", taken_over_then_stopped)

    state = world.update(require_approval=True)

    assert state.is_completed(), state.message
    assert state.result()["state"] == "taken over"
    run = world.run()
    assert run.id is not None and run.lease_owner == "elsewhere:1/abc"  # not ours to end
    if action == "pause honoured by its owner":  # and the wake is no refusal 'by upkeep pause/cancel'
        assert (run.state, run.reason) == (RunState.paused, "paused by its owner")
    else:
        assert run.state == RunState.running and run.requested_action == action  # for its owner
    assert world.upgraded() == [0, 0, 0]
    with session_scope(world.engine) as session:
        assert list(session.exec(select(Alert.kind).where(Alert.run_id == run.id))) == []
    assert [taken for taken, _by, _why in _decisions(world, run.id)] == [action.split()[0]]  # no answer


def _seen_waiting_for_the_row(engine: Engine, pids: list[int]) -> None:
    """On PostgreSQL, until the server shows the connection last checked out by the other thread
    (`pids`, its backend pids) waiting for a lock: the run's row this thread's transaction holds. On
    SQLite nothing to see (BEGIN IMMEDIATE makes the other wait for our commit all the same)."""
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        return
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the other transaction never waited for the run's row"
        if pids:
            with engine.connect() as conn:
                waits = conn.execute(
                    text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pids[-1]}
                ).scalar()
            if waits == "Lock":
                return
        time.sleep(0.01)


@pytest.mark.parametrize("first", ["approve", "cancel"])
def test_an_approval_and_a_cancel_at_the_gate_at_once_are_ordered_by_the_run_s_row(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """Two operators at the gate at the same moment, on each database: the second arrives while the
    first's transaction holds the run's row (on PostgreSQL it is seen waiting for that lock before the
    first commits). Exactly one takes the gate and the other is told so: approved first, the cancel is an
    ordinary one honoured before any node; cancelled first, the approval is refused and Prefect never
    hears it. Either way the run ends cancelled, no node touched, each decision shown once."""
    import threading

    from sqlalchemy import event

    from flows import approval
    from upkeep import updates
    from upkeep.console import CliError

    with _world(engine, tmp_path, monkeypatch) as world:
        said: dict[str, str] = {}
        pids: list[int] = []
        resumed: list[dict[str, Any]] = []

        def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            if threading.current_thread().name == "second" and engine.dialect.name == "postgresql":
                pids.append(dbapi_conn.info.backend_pid)

        event.listen(engine, "checkout", on_checkout)

        def answer(verb: str) -> None:
            run_id = world.run().id
            assert run_id is not None
            try:
                if verb == "approve":
                    said[verb] = updates.approve_run(
                        run_id, engine=engine, approved=True, reason="go", actor="op"
                    )
                else:
                    said[verb] = updates.request_stop(
                        run_id, "cancel", engine=engine, actor="sre", reason="froze"
                    )
            except CliError as refused:
                said[verb] = f"refused: {refused}"

        def second_arrives() -> threading.Thread:
            other = threading.Thread(
                target=answer, args=("cancel" if first == "approve" else "approve",), name="second"
            )
            other.start()
            _seen_waiting_for_the_row(engine, pids)  # the first's row lock, seen by the server
            return other

        threads: list[threading.Thread] = []

        def prefect_takes(_flow_run_id: Any, run_input: dict[str, Any]) -> None:
            resumed.append(run_input)
            if first == "approve":
                threads.append(second_arrives())

        real_stop_at_the_gate = updates._stop_at_the_gate

        def stop_at_the_gate(run: Any, action: str) -> str:
            if first == "cancel":
                threads.append(second_arrives())
            return real_stop_at_the_gate(run, action)

        def at_the_gate(**_kwargs: Any) -> Any:
            with session_scope(engine) as session:
                session.execute(
                    update(UpgradeRun)
                    .where(col(UpgradeRun.id) == world.run().id)
                    .values(flow_run_id="00000000-0000-0000-0000-000000000003")
                )
            answer(first)
            for other in threads:
                other.join(timeout=60)
            if first == "approve":
                return approval.Approval(approved=True, approver="op", reason="go")
            return approval.Approval(approved=False, approver=approval.STOPPED_BY)

        monkeypatch.setattr(approval, "pause_flow_run", at_the_gate)
        monkeypatch.setattr("flows.approval.resume_flow_run", prefect_takes)
        monkeypatch.setattr(updates, "_stop_at_the_gate", stop_at_the_gate)
        try:
            state = world.update(require_approval=True)
        finally:
            event.remove(engine, "checkout", on_checkout)

        assert state.is_completed(), state.message
        run = world.run()
        assert run.id is not None and threads and not threads[0].is_alive()
        assert (
            run.state == RunState.cancelled and run.reason == "cancelled by sre: froze (after 0 of 3 nodes)"
        )
        assert world.upgraded() == [0, 0, 0]
        if first == "approve":
            assert said["approve"] == f"run {run.id} approved"
            assert "it was approved (by op)" in said["cancel"], said
            assert _decisions(world, run.id) == [("approved", "op", "go"), ("cancel", "sre", "froze")]
            assert run.approved_by == "op"
        else:
            assert "before approval" in said["cancel"], said
            assert said["approve"].startswith("refused: ") and "came first" in said["approve"], said
            assert _decisions(world, run.id) == [("cancel", "sre", "froze")]
            assert resumed == [] and not run.approved_by


@pytest.mark.parametrize("where", ["at the gate", "between nodes"])
def test_a_pause_after_a_cancel_does_not_turn_the_cancel_into_a_pause(
    world: World, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Two operators: one cancels (told 'it stops within seconds', the reason is for the customer), the
    other pauses a moment later. The pause overwrote the pending cancel: the run ended paused, the
    customer never told, the update open for anyone to resume (adversarial pass adv33). A pending cancel
    stands; the pause is told so, in one line."""
    from flows import approval
    from upkeep.console import CliError
    from upkeep.updates import request_stop

    told: list[str] = []

    def cancel_then_pause() -> None:
        run_id = world.run().id
        assert run_id is not None
        request_stop(run_id, "cancel", engine=world.engine, actor="sre", reason="customer froze changes")
        with pytest.raises(CliError, match="cancel") as refused:
            request_stop(run_id, "pause", engine=world.engine, actor="ops")
        told.append(str(refused.value))

    if where == "at the gate":

        def at_the_gate(**_kwargs: Any) -> Any:
            cancel_then_pause()
            return approval.Approval(approved=False, approver=approval.STOPPED_BY)

        monkeypatch.setattr(approval, "pause_flow_run", at_the_gate)
        state = world.update(require_approval=True)
        done = 0
    else:
        world.nodes[0].before["upgrade"] = lambda _node: cancel_then_pause()
        state = world.update()
        done = 1

    assert state.is_completed(), state.message
    run = world.run()
    assert told and "\n" not in told[0], told
    assert run.state == RunState.cancelled, (run.state, run.reason)
    assert run.reason == f"cancelled by sre: customer froze changes (after {done} of 3 nodes)"
    assert world.upgraded() == [done, 0, 0]


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_a_stop_at_the_gate_of_an_update_never_announced_tells_the_customer_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """`upkeep update --require-approval` (never announced) stopped at its gate: no notice for the
    customer (there is nothing to withdraw), the SRE's run-cancelled alert once for a cancel; `upkeep
    show` reads the ending (no `awaiting_approval` phase left, nothing answered at the gate)."""
    from flows import approval
    from inventory.alerts import Alert
    from inventory.run_report import run_phase
    from upkeep.updates import request_stop

    def stopped_at_the_gate(**_kwargs: Any) -> Any:
        run_id = world.run().id
        assert run_id is not None
        request_stop(run_id, action, engine=world.engine, actor="sre", reason="customer froze changes")
        return approval.Approval(approved=False, approver=approval.STOPPED_BY)  # the watcher's wake

    monkeypatch.setattr(approval, "pause_flow_run", stopped_at_the_gate)

    state = world.update(require_approval=True)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.id is not None and world.upgraded() == [0, 0, 0]
    assert world.notices(run.id) == []
    with session_scope(world.engine) as session:
        alerts = list(session.exec(select(Alert.kind).where(Alert.run_id == run.id)))
        stored = session.get(UpgradeRun, run.id)
        assert stored is not None
        phase = run_phase(stored, session)
    assert alerts == (["run-cancelled"] if action == "cancel" else [])
    assert phase == ("cancelled" if action == "cancel" else "paused")
    assert [taken for taken, _by, _why in _decisions(world, run.id)] == [action]
    assert not run.approved_by


@pytest.mark.parametrize("forged", [True, False])
def test_an_answer_forging_the_stop_s_name_in_the_prefect_ui_is_no_decision(
    world: World, monkeypatch: pytest.MonkeyPatch, forged: bool
) -> None:
    """The gate's wake for a pause/cancel is an answer named 'upkeep pause/cancel', believed only with a
    stop recorded. Typed in the Prefect UI's resume form with no stop pending, it was taken as an
    answer: the run approved 'by upkeep pause/cancel' (or cancelled 'approval refused by upkeep
    pause/cancel'), a decision `upkeep show` pins on a command that never decides (adversarial pass
    adv33). Now it is no decision: the gate asks again, and the next answer counts."""
    from flows import approval

    keys: list[str] = []

    def answers(**kwargs: Any) -> Any:
        keys.append(kwargs["key"])
        if len(keys) == 1:
            return approval.Approval(approved=forged, approver=approval.STOPPED_BY, reason="")
        return approval.Approval(approved=True, approver="alice", reason="CHG-7")

    monkeypatch.setattr(approval, "pause_flow_run", answers)

    state = world.update(require_approval=True)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.id is not None
    assert len(keys) == 2 and len(set(keys)) == 2, keys  # asked again, under a key of its own
    assert (run.state, run.approved_by) == (RunState.succeeded, "alice")
    assert _decisions(world, run.id) == [("approved", "alice", "CHG-7")]


def test_a_failure_after_a_node_was_touched_opens_a_case_with_diagnostics_and_alerts_the_sre(
    world: World,
) -> None:
    # The module's docstring says a failed run opens its case and collects diagnostics through the
    # fakes; flows.outcomes.alert_sre swallows any error there ("diagnostics trouble never hides the
    # failure"), so without these asserts a broken case path left every test here green.
    from inventory.alerts import Alert
    from inventory.case_tables import Case, DiagnosticsBundle

    _upgrade_fails(world.nodes[1])

    state = world.update()

    assert state.is_failed()
    run = world.run()
    with session_scope(world.engine) as session:
        [case] = session.exec(select(Case)).all()
        assert str(run.id) in case.subject and CLUSTER in case.subject
        [bundle] = session.exec(select(DiagnosticsBundle)).all()
        assert bundle.case_id == case.id and bundle.run_id == run.id
        [alert] = session.exec(select(Alert).where(Alert.kind == "run-failed")).all()
        assert alert.run_id == run.id
        assert case.ref in alert.body_text and bundle.url in alert.body_text
        assert "could not be collected" not in alert.body_text and not bundle.partial
