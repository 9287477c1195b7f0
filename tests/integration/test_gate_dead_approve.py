"""`upkeep approve` of a run whose gate's process was killed (kill -9), and what a stop there promises.

Prefect takes an answer for a dead process's pause, so `upkeep approve` said "run N approved", and the
operator waited for the upgrade to start: nothing carries the run on until the dispatcher takes it over
once its lease has run out (flows/lease.py); then the gate finds the approval recorded and the run goes
on. It now says so, as `upkeep cancel|pause` there does. And where no dispatcher runs (a single machine
without the deployment or a cron entry) nobody takes it over: both lines name `upkeep dispatch`, which
does one take-over here.

A real `upkeep resume` process waiting at the gate (quick lab, the session's Prefect server), killed; the
real dispatcher's take-over after it, its clock past the lease, as in test_gate_dead_process."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.dispatch import dispatch
from inventory.models import RunState
from tests.integration.test_gate_dead_process import _killed_at_the_gate
from tests.integration.test_takeover import _run, _upgrades
from tests.support.cli import upkeep_in_process
from upkeep.updates import request_stop

pytestmark = [pytest.mark.lab, pytest.mark.prefect]


def test_approve_at_the_gate_of_a_killed_process_says_the_take_over_carries_it_on_and_it_does(
    lab: Any, fresh_cluster: str, lab_runtime: Any, tmp_path: Path
):
    runtime, engine = lab_runtime, lab_runtime.engine
    env, run_id, lease_until = _killed_at_the_gate(lab, fresh_cluster, runtime, tmp_path / "home")

    said = upkeep_in_process("approve", str(run_id), "--reason", "CHG-11", env=env)
    assert said.returncode == 0 and said.stderr == "", said
    line = " ".join(said.stdout.split())  # the console wraps it at the terminal's width
    assert line.startswith(f"run {run_id} approved"), line
    assert "is not answering" in line and "the dispatcher's next take-over carries it on" in line, line
    assert f"once its lease runs out at {lease_until:%Y-%m-%d %H:%M:%S} UTC" in line, line
    assert "`upkeep dispatch`" in line, line
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]

    runtime.clock = lambda: lease_until + timedelta(seconds=1)
    assert dispatch(max_running=1)["taken_over"] == [run_id]
    final = _run(engine, run_id)
    assert final.state == RunState.succeeded and final.approved_by, final
    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]


def test_a_stop_at_a_dead_gate_names_upkeep_dispatch_for_where_no_dispatcher_runs(
    lab: Any, fresh_cluster: str, lab_runtime: Any, tmp_path: Path
):
    _env, run_id, lease_until = _killed_at_the_gate(lab, fresh_cluster, lab_runtime, tmp_path / "home")
    line = request_stop(run_id, "cancel", engine=lab_runtime.engine, actor="sre", reason="froze")
    assert "the dispatcher's next take-over ends it" in line, line
    assert f"once its lease runs out at {lease_until:%Y-%m-%d %H:%M:%S} UTC" in line, line
    assert "`upkeep dispatch` after that" in line, line  # not now: before then it takes nothing over
