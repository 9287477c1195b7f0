"""Commands while the fleet is braked (UPKEEP_CLUSTER_LIMIT names a limit that grants no slot; upkeep/
updates.py `cluster_limit_grants`), from the adversarial pass adv39: what a refused resume leaves behind,
the run it must not refuse, `request --now` and `update --check`; and an approval and a refusal at once.

The flow under the real Prefect engine and server (a real limit of 0); nodes, file server, mail and clock
are tests/support/fakes.py's (`prefect_world`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from inventory.db import session_scope
from inventory.models import AuditEvent, RunState, UpgradeRun
from inventory.types import utcnow
from tests.integration.test_cluster_limit_resumed import _limit_of_zero
from tests.support.update_world import World

pytestmark = [pytest.mark.prefect]


def _orphan_every_node_verified(world: World, monkeypatch: pytest.MonkeyPatch) -> int:
    """Node 3 verified, then the process dies before recording the success (kill -9): the run is left
    `running`, its lease run out (by the CLI's clock)."""
    world.killed_before_recording_success(monkeypatch)
    with session_scope(world.engine) as session:
        run = session.exec(select(UpgradeRun)).one()
        run.lease_until = utcnow() - timedelta(hours=1)  # its lease ran out an hour ago
        session.add(run)
        assert run.id is not None
        return run.id


def _as_left(world: World, run_id: int) -> tuple[Any, ...]:
    with session_scope(world.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        audit = session.exec(select(AuditEvent.action).where(AuditEvent.subject == f"run/{run_id}"))
        return (
            run.state,
            run.reason,
            run.requested_action,
            run.lease_owner,
            run.lease_until,
            run.lease_since,
            sorted(audit),
        )


def test_a_refused_resume_leaves_the_orphan_and_its_pending_cancel_exactly_as_they_were(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orphan (its process died mid-way; lease run out) with a cancel asked by the on-call, then a
    second SRE's `upkeep resume` while the fleet is braked (limit 0). Refused, "nothing was started or
    changed": but the claim had cleared the pending cancel and the release cleared the lease, so the run
    was `running` with no lease at all: never an orphan again (no take-over once the brake lifts: orphans
    need a lease_until), counted live against the dispatcher's limit for ever, the cancel wiped."""
    from upkeep.console import CliError
    from upkeep.updates import request_stop, resume_run

    world = prefect_world
    run_id = _orphan_every_node_verified(world, monkeypatch)
    with session_scope(world.engine) as session:  # node 3 left unverified: work is left, a slot is needed
        from inventory.models import NodeStep

        last = session.exec(
            select(NodeStep).where(NodeStep.step == "verify").order_by(col(NodeStep.id).desc())
        ).first()
        assert last is not None
        session.delete(last)
    request_stop(run_id, "cancel", engine=world.engine, actor="oncall", reason="freeze")
    before = _as_left(world, run_id)
    assert before[2] == "cancel" and before[4] is not None, before
    limit = _limit_of_zero(world)

    with pytest.raises(CliError, match=f"{limit}.*nothing was started or changed"):
        resume_run(run_id, engine=world.engine, as_json=True, actor="sre")

    assert _as_left(world, run_id) == before


def test_a_resume_of_a_run_whose_every_node_was_verified_records_it_succeeded_while_braked(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same orphan with nothing left to do: it needs no slot (the flow records it succeeded at a limit
    of 0, adv37). The braked dispatcher takes no orphan over, so the SRE's `upkeep resume` is the only
    way it ends before the brake lifts; refusing it left the customer's complete update `running`."""
    from upkeep.updates import resume_run

    world = prefect_world
    run_id = _orphan_every_node_verified(world, monkeypatch)
    _limit_of_zero(world)

    resume_run(run_id, engine=world.engine, as_json=True, actor="sre")

    ended = world.run()
    assert ended.state == RunState.succeeded, (ended.state, ended.reason)
    assert world.notices(run_id) == ["started", "completed"]


def test_an_update_requested_now_while_braked_is_refused_before_a_run_is_written(
    prefect_world: World,
) -> None:
    """`upkeep request --now` into a braked fleet: it created the run, then refused with "...; nothing was
    started or changed; run N waits: `upkeep resume N` or `upkeep cancel N`": a run was written, and one
    the dispatcher starts the moment the brake lifts. Refused before writing, as `upkeep update` is."""
    from inventory.alerts import Alert
    from upkeep.console import CliError

    world = prefect_world
    limit = _limit_of_zero(world)

    with pytest.raises(CliError, match=f"{limit}.*nothing was started or changed") as refused:
        world.request(now_run=True, as_json=True)

    assert "waits" not in str(refused.value), refused.value
    with session_scope(world.engine) as session:
        assert session.exec(select(UpgradeRun)).all() == []
        assert session.exec(select(Alert)).all() == []


def test_update_check_while_braked_does_not_say_update_runs_it(prefect_world: World) -> None:
    """`upkeep update --check` is what `upkeep update` would refuse on; with the limit at 0 it said
    "every check passed; `upkeep update fake-c1 --to 9.10.0` runs it", and that update is refused."""
    from flows.check import check_update
    from flows.plan import plan_update
    from tests.support.update_world import CLUSTER, TARGET

    world = prefect_world
    limit = _limit_of_zero(world)
    with session_scope(world.engine) as session:
        plan = plan_update(CLUSTER, TARGET, session=session)

    result = check_update(plan, world.runtime)

    assert not result.ok, result
    failed = [item for item in result.checks if not item.ok]
    assert [item.what for item in failed] == ["cluster-limit"], failed
    assert limit in failed[0].detail and "\n" not in failed[0].detail, failed[0].detail


@pytest.mark.lab
def test_approved_and_refused_at_once_exactly_one_answers_the_gate(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Any
) -> None:
    """Two operators answer one gate at the same moment, one approving, one refusing (approve_run now
    flushes its write before it wakes the gate, adv36): exactly one is told done and recorded; the other
    is one line, exit 1, and the run ends as the winner said. On SQLite and PostgreSQL."""
    from tests.integration.test_endings import _answers, _gated_run
    from tests.integration.test_takeover import _cli_env, _run
    from tests.integration.test_update_control import _start

    engine = lab_runtime_any_db.engine
    env = _cli_env(lab, engine, tmp_path / "home")
    run_id, proc = _gated_run(env, engine, fresh_cluster)

    yes = _start(env, "approve", str(run_id), "--reason", "go")
    no = _start(env, "approve", str(run_id), "--refuse", "--reason", "not this week")
    approve = (yes.wait(timeout=120), *yes.communicate())
    refuse = (no.wait(timeout=120), *no.communicate())
    proc.wait(timeout=300)

    for _code, out, err in (approve, refuse):
        assert "Traceback" not in out + err and "bug" not in err, (out, err)
    assert sorted([approve[0], refuse[0]]) == [0, 1], (approve, refuse)
    loser = refuse if approve[0] == 0 else approve
    assert loser[2].strip().count("\n") == 0 and str(run_id) in loser[2], loser
    decisions = _answers(env, run_id)
    final = _run(engine, run_id)
    if approve[0] == 0:
        assert decisions == [("approved", "go")] and final.state == RunState.succeeded, (decisions, final)
    else:
        assert decisions == [("refused", "not this week")], decisions
        assert final.state == RunState.cancelled, final


def test_a_held_orphan_whose_every_node_was_verified_is_told_so_with_the_resume_that_ends_it(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The braked tick's alert for an orphan (adv38) said "stopped mid-way ... its nodes may be
    half-upgraded; fix the limit" of a run whose every node was verified: the on-call is sent to lift the
    brake (or to the customer) for an update that is complete, and `upkeep resume` records it succeeded
    with no slot (adv39). Told as it is."""
    import logging

    from flows.dispatch import cluster_limit_blocks

    world = prefect_world
    run_id = _orphan_every_node_verified(world, monkeypatch)
    _limit_of_zero(world)

    assert cluster_limit_blocks(world.runtime, world.clock(), logging.getLogger("adv39"))

    from inventory.alerts import Alert

    with session_scope(world.engine) as session:
        [told] = session.exec(select(Alert).where(Alert.run_id == run_id)).all()
    assert "half-upgraded" not in told.body_text and "mid-way" not in told.subject, told.body_text
    assert f"upkeep resume {run_id}" in told.body_text, told.body_text
