"""Who answered the approval gate, kept whole on SQLite and PostgreSQL; a bad name refused before it is
written. The approver comes from operator input: free text typed in the Prefect UI's resume form, or the
user name `upkeep approve` reads from its environment ($LOGNAME, $USER...). A name longer than the old
VARCHAR(128) made the gate's write fail on PostgreSQL after the pause had been answered: the run ended
failed with nothing recorded of the answer (SQLite stored it: it never enforces a VARCHAR's length).

A real gated run (a real `upkeep resume` process waiting in Prefect on the quick lab), on each database."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from inventory.models import RunState
from tests.integration.test_endings import _answers, _gated_run
from tests.integration.test_takeover import _cli_env, _run, _upgrades
from tests.support.cli import upkeep_in_process

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

# 200 characters, none of them ASCII only: what a person types into a form, longer than the old limit.
LONG = "Ada Lovelace-Byron, Change Advisory Board (EMEA), on behalf of Ørsted Vindkraft A/S " * 2 + "é" * 30


@pytest.mark.parametrize("approved", [True, False], ids=["approved", "refused"])
def test_a_long_name_typed_in_the_prefect_ui_is_kept_whole(
    approved: bool, lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path
):
    from prefect.flow_runs import resume_flow_run

    from inventory.runs import refusal

    assert len(LONG) > 128
    engine = lab_runtime_any_db.engine
    env = _cli_env(lab, engine, tmp_path / "home")
    run_id, proc = _gated_run(env, engine, fresh_cluster)

    flow_run_id = UUID(_run(engine, run_id).flow_run_id or "")
    resume_flow_run(flow_run_id, run_input={"approved": approved, "approver": LONG, "reason": "CHG-7"})
    assert proc.wait(timeout=120) == (0 if approved else 1), proc.communicate()  # refused: 1

    final = _run(engine, run_id)
    if approved:
        assert final.state == RunState.succeeded and final.approved_by == LONG, (final.state, final.reason)
        assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    else:
        assert final.state == RunState.cancelled and final.reason == refusal(LONG, "CHG-7"), final.reason
        assert _upgrades(lab, fresh_cluster) == [0, 0, 0]
    [decision] = [d for d in upkeep_show_decisions(env, run_id) if d["decision"] in ("approved", "refused")]
    assert (decision["by"], decision["reason"]) == (LONG, "CHG-7"), decision


def test_upkeep_approve_by_a_long_user_name_is_kept_whole(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path
):
    engine = lab_runtime_any_db.engine
    env = _cli_env(lab, engine, tmp_path / "home")
    run_id, proc = _gated_run(env, engine, fresh_cluster)

    said = upkeep_in_process(
        "approve", str(run_id), "--reason", "CHG-8", env={**env, "LOGNAME": LONG, "USER": LONG}
    )
    assert said.returncode == 0 and f"run {run_id} approved" in said.stdout, said
    assert proc.wait(timeout=120) == 0, proc.communicate()
    final = _run(engine, run_id)
    assert final.state == RunState.succeeded and final.approved_by == LONG, (final.state, final.reason)
    assert _answers(env, run_id) == [("approved", "CHG-8")]  # one decision, not two


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"LOGNAME": "ops\nroot"}, "$LOGNAME"),
        ({"LOGNAME": "", "USER": "ops\x1b[2Jroot"}, "$USER"),
        ({"LOGNAME": "   ", "USER": "ops"}, "$LOGNAME"),
    ],
    ids=["newline", "escape-sequence", "blank"],
)
def test_a_bad_approver_name_is_refused_in_one_line_and_nothing_is_written(
    variables: dict[str, str],
    named: str,
    lab: Any,
    fresh_cluster: str,
    lab_runtime_any_db: Any,
    tmp_path: Path,
):
    engine = lab_runtime_any_db.engine
    env = _cli_env(lab, engine, tmp_path / "home")
    run_id, proc = _gated_run(env, engine, fresh_cluster)
    try:
        for verb in (["approve"], ["approve", "--refuse"]):
            said = upkeep_in_process(*verb, str(run_id), "--reason", "CHG-9", env={**env, **variables})
            assert said.returncode == 1 and "Traceback" not in said.stdout + said.stderr, said
            assert said.stderr.strip().count("\n") == 0 and named in said.stderr, said.stderr
            assert repr(variables[named[1:]]) in said.stderr, said.stderr  # the value, shown escaped
        waiting = _run(engine, run_id)
        assert waiting.state == RunState.running and not waiting.approved_by and not waiting.reason
        assert _answers(env, run_id) == []
        assert _upgrades(lab, fresh_cluster) == [0, 0, 0]
    finally:
        proc.kill()
        proc.wait(timeout=60)


def upkeep_show_decisions(env: dict[str, str], run_id: int) -> list[dict[str, Any]]:
    import json

    shown = upkeep_in_process("show", str(run_id), "--json", env=env)
    return list(json.loads(shown.stdout)["decisions"])
