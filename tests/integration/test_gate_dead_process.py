"""`upkeep cancel|pause` of a run at its approval gate whose process was killed (kill -9): told the truth.

A live gate wakes for the stop within seconds: its process's watcher thread reads the stop and resumes the
pause (flows/approval.py). A killed process has no watcher; nothing ends the run until the dispatcher
takes it over once its lease has run out (flows/lease.py), and the take-over honours the stop. The CLI
said "it stops within seconds" either way; it now says the process is not answering and that the
dispatcher's next take-over ends it, and when. The stop is recorded as before and the exit code is 0.

A real `upkeep resume` process waiting at the gate (quick lab, the session's Prefect server), killed; the
real dispatcher's take-over after it, its clock past the lease as in tests/integration/test_takeover.py."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.dispatch import dispatch
from inventory.models import RunState
from tests.integration.test_endings import _gated_run
from tests.integration.test_takeover import _cli_env, _run, _upgrades
from tests.support.cli import upkeep_in_process
from upkeep.updates import request_stop

pytestmark = [pytest.mark.lab, pytest.mark.prefect]


def _killed_at_the_gate(lab: Any, cluster: str, runtime: Any, home: Path) -> tuple[dict[str, str], int, Any]:
    """A run waiting at its approval gate whose process was just killed: the env, its id, its lease end."""
    env = _cli_env(lab, runtime.engine, home)
    run_id, proc = _gated_run(env, runtime.engine, cluster)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    lease_until = _run(runtime.engine, run_id).lease_until
    assert lease_until is not None
    return env, run_id, lease_until


def test_cancel_at_the_gate_of_a_killed_process_says_the_take_over_ends_it_and_it_does(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path
):
    runtime, engine = lab_runtime_any_db, lab_runtime_any_db.engine
    env, run_id, lease_until = _killed_at_the_gate(lab, fresh_cluster, runtime, tmp_path / "home")

    said = upkeep_in_process("cancel", str(run_id), "--reason", "customer froze changes", env=env)
    assert said.returncode == 0 and said.stderr == "", said
    line = " ".join(said.stdout.split())  # the console wraps it at the terminal's width
    assert "within seconds" not in line, line
    assert f"run {run_id}: cancel requested before approval" in line, line
    assert "is not answering" in line and "the dispatcher's next take-over ends it" in line, line
    assert f"once its lease runs out at {lease_until:%Y-%m-%d %H:%M:%S} UTC" in line, line
    recorded = _run(engine, run_id)
    assert (recorded.state, recorded.requested_action) == (RunState.running, "cancel")
    assert recorded.reason.endswith(": customer froze changes"), recorded.reason

    # What the line promised: the take-over once the lease ran out ends it cancelled, no node touched.
    runtime.clock = lambda: lease_until + timedelta(seconds=1)
    assert dispatch(max_running=1)["taken_over"] == [run_id]
    final = _run(engine, run_id)
    assert final.state == RunState.cancelled and "customer froze changes" in final.reason, final.reason
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]


def test_pause_at_the_gate_once_the_killed_process_s_lease_ran_out_says_when_it_ran_out(
    lab: Any, fresh_cluster: str, lab_runtime: Any, tmp_path: Path
):
    runtime, engine = lab_runtime, lab_runtime.engine
    _env, run_id, lease_until = _killed_at_the_gate(lab, fresh_cluster, runtime, tmp_path / "home")

    runtime.clock = lambda: lease_until + timedelta(seconds=1)  # the CLI's clock: past the lease
    line = request_stop(run_id, "pause", engine=engine, actor="sre")
    assert "within seconds" not in line and "is not answering" in line, line
    assert f"its lease ran out at {lease_until:%Y-%m-%d %H:%M:%S} UTC" in line, line
    assert "`upkeep resume` asks for approval again" in line, line
    assert _run(engine, run_id).requested_action == "pause"

    assert dispatch(max_running=1)["taken_over"] == [run_id]
    final = _run(engine, run_id)
    assert final.state == RunState.paused and not final.approved_by, final
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]
