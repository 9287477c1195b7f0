"""`upkeep approve` whose own write fails (the database refuses it: a lock timeout, a full disk, a value it
cannot hold) must not have woken the gate. It answered Prefect first and wrote afterwards, at its commit:
the gate took the approval and the run went on, upgrading nodes, while the operator was told "unexpected
error ... a bug" and believed nothing had happened. Now its writes reach the database before the gate is
answered: a refused write is one line, the gate still waits, and a second `upkeep approve` goes through.

The database's refusal is a real one: a trigger that aborts the decision's INSERT. A real gated run (a real
`upkeep resume` process waiting in Prefect on the quick lab), on each database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from inventory.models import RunState
from tests.integration.test_endings import _answers, _gated_run
from tests.integration.test_takeover import _cli_env, _run, _upgrades
from tests.integration.test_update_control import _flow_run_paused
from tests.support.cli import upkeep_in_process

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

_REFUSE_APPROVALS = {
    "sqlite": [
        "CREATE TRIGGER no_approvals BEFORE INSERT ON auditevent WHEN NEW.action = 'run.approved' "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION no_approvals() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$",
        "CREATE TRIGGER no_approvals BEFORE INSERT ON auditevent FOR EACH ROW "
        "WHEN (NEW.action = 'run.approved') EXECUTE FUNCTION no_approvals()",
    ],
}


def test_an_approval_the_database_refuses_leaves_the_gate_waiting(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path
):
    engine = lab_runtime_any_db.engine
    env = _cli_env(lab, engine, tmp_path / "home")
    run_id, proc = _gated_run(env, engine, fresh_cluster)
    try:
        with engine.begin() as conn:
            for statement in _REFUSE_APPROVALS[engine.dialect.name]:
                conn.execute(text(statement))
        said = upkeep_in_process("approve", str(run_id), "--reason", "CHG-10", env=env)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "DROP TRIGGER no_approvals"
                    + (" ON auditevent" if engine.dialect.name != "sqlite" else "")
                )
            )

        waiting = _run(engine, run_id)
        assert _flow_run_paused(waiting.flow_run_id), "the gate was answered although nothing was recorded"
        assert said.returncode == 1 and "Traceback" not in said.stdout + said.stderr, said
        assert said.stderr.strip().count("\n") == 0, said.stderr
        assert f"run {run_id}" in said.stderr and "not approved" in said.stderr, said.stderr
        assert "bug" not in said.stderr, said.stderr
        assert waiting.state == RunState.running and not waiting.approved_by, waiting
        assert _answers(env, run_id) == []

        again = upkeep_in_process("approve", str(run_id), "--reason", "CHG-10", env=env)
        assert again.returncode == 0 and f"run {run_id} approved" in again.stdout, again
        assert proc.wait(timeout=120) == 0, proc.communicate()
        assert _run(engine, run_id).state == RunState.succeeded
        assert _answers(env, run_id) == [("approved", "CHG-10")]
        assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def test_an_approval_whose_commit_fails_after_the_gate_took_it_is_told_so_and_the_gate_records_it(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path
):
    """What the flush cannot catch: the COMMIT itself failing after Prefect took the answer (a deferred
    constraint here, once; a connection lost at COMMIT in the world). The gate wakes with the answer and
    records it itself (as one typed in the Prefect UI). The operator was told "unexpected ... a bug in
    Upkeep", as if nothing had happened; now the line says the gate took the answer and where to look."""
    engine = lab_runtime_any_db.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("a failure at COMMIT itself: PostgreSQL's deferred constraint trigger")
    env = _cli_env(lab, engine, tmp_path / "home")
    run_id, proc = _gated_run(env, engine, fresh_cluster)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE SEQUENCE approvals_seen"))  # outside any transaction's rollback
            conn.execute(
                text(
                    "CREATE FUNCTION first_approval_fails() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF nextval('approvals_seen') = 1 THEN RAISE EXCEPTION 'terminating connection due "
                    "to administrator command'; END IF; RETURN NULL; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE CONSTRAINT TRIGGER first_approval_fails AFTER INSERT ON auditevent "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.action = 'run.approved') "
                    "EXECUTE FUNCTION first_approval_fails()"
                )
            )
        said = upkeep_in_process("approve", str(run_id), "--reason", "CHG-12", env=env)
        assert said.returncode == 1 and "Traceback" not in said.stdout + said.stderr, said
        assert said.stderr.strip().count("\n") == 0 and "bug" not in said.stderr, said.stderr
        assert f"run {run_id}" in said.stderr and "the gate took the answer" in said.stderr, said.stderr
        assert f"upkeep show {run_id}" in said.stderr, said.stderr

        assert proc.wait(timeout=120) == 0, proc.communicate()  # the gate recorded it and went on
        final = _run(engine, run_id)
        assert final.state == RunState.succeeded and final.approved_by, final
        assert _answers(env, run_id) == [("approved", "CHG-12")]  # one decision: the gate's
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
