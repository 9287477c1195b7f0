"""Two operators at once: one owner per run, proven with real processes.

A real `upkeep update` is SIGKILLed in the middle of its second node's upgrade (tasks/failpoints.py),
leaving a `running` run whose holder is gone. Then five real `upkeep resume RUN` start together
against the same database (SQLite and PostgreSQL) and the session's Prefect test server. Exactly one
may carry the run out; the others must exit 2 with one line naming the holder, and nothing they do may
fail the run, open a case or queue a notice. Every node is upgraded once, by its own agent's log.

No timing decides the outcome: the test holds the last node's upgrade lock (the lab agent's flock,
what a second upgrade on the node would meet), so whichever process won is still carrying the run
out, stuck retrying that node, when the four others have ended; then the lock is released and the
winner finishes. The same with a dispatcher take-over racing a manual resume.

Fast variant: 2 repetitions per database. `UPKEEP_SOAK=1`: 20 (the issue's acceptance).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, func, select

from inventory.case_tables import Case
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import AuditEvent, NodeStep, RunState, StepState, UpgradeRun
from inventory.outbox import Notice
from inventory.types import utcnow
from tests.faults.conftest import SOAK
from tests.faults.helpers import TARGET, hosts, runs_of, upgrades
from tests.integration.conftest import upkeep_cli
from tests.integration.test_takeover import _cli_env
from tests.support import forkserver
from tests.support.labs import running_lab

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.prefect]

REPETITIONS = int(os.environ.get("UPKEEP_RACE_REPETITIONS") or (20 if SOAK else 2))
RESUMERS = 5
DEADLINE = 240.0  # for a process to end; never reached unless something hangs


@pytest.fixture(scope="session")
def race_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A cluster per repetition and database, two for the take-over races, one for the temporary
    Prefect server. Upgrades take 1 s so the kill at 0.3 s into the second node's lands inside it."""
    with running_lab(
        tmp_path_factory.mktemp("racelab"),
        clusters=2 * REPETITIONS + 3,
        nodes=3,
        upgrade_seconds=1.0,
        health_delay=0.1,
    ) as lab:
        yield lab


_used: set[str] = set()


def _cluster(lab: Any) -> str:
    clusters = list(dict.fromkeys(node["cluster"] for node in lab.status()["nodes"]))
    free = [c for c in clusters if c not in _used]
    if not free:
        pytest.fail(f"the race lab has only {len(clusters)} clusters")
    _used.add(free[0])
    return free[0]


@contextmanager
def node_busy(lab: Any, hostname: str) -> Iterator[None]:
    """Hold the node's upgrade lock: an upgrade of it waits (the agent answers 75) until released."""
    with open(lab.node_dir(hostname) / ".upgrade.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _start(env: dict[str, str], *args: str) -> Any:
    return forkserver.popen(args, env=env, stdin=None)


def _wait_until(procs: list[subprocess.Popen[str]], ended: int) -> None:
    """Poll (bounded) until `ended` of `procs` have exited; fails with what is still running."""
    deadline = time.monotonic() + DEADLINE
    while sum(p.poll() is not None for p in procs) < ended:
        if time.monotonic() > deadline:
            for proc in procs:
                proc.kill()
            pytest.fail(f"only {sum(p.poll() is not None for p in procs)} of {len(procs)} ended")
        time.sleep(0.05)


def _crash_mid_second_node(env: dict[str, str], cluster: str, engine: Any) -> int:
    crashed = upkeep_cli(
        {**env, "UPKEEP_FAILPOINT": "mid-upgrade:2"}, "update", cluster, "--to", TARGET, check=False
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout[-2000:] + crashed.stderr[-2000:]
    (run,) = runs_of(engine, cluster)
    assert run.state == RunState.running and run.lease_owner, run
    assert run.id is not None
    return run.id


def _count(engine: Any, query: Any) -> int:
    with session_scope(engine) as session:
        return int(session.exec(query).one())


def _assert_carried_out_once(engine: Any, lab: Any, cluster: str, run_id: int) -> None:
    """The run succeeded; nothing failed it, opened a case or queued a failure notice; every node
    upgraded once by its own log; no step left open, the one the kill cut closed as interrupted."""
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.state == RunState.succeeded, run and run.reason
        assert (run.lease_owner, run.lease_until, run.lease_since) == (None, None, None)
        steps = session.exec(select(NodeStep).where(NodeStep.run_id == run_id)).all()
    subject = f"run/{run_id}"
    assert _count(engine, select(func.count()).where(AuditEvent.action == "run.failed")) == 0
    assert _count(engine, select(func.count()).select_from(Case)) == 0
    failure_notices = select(func.count()).where(
        Notice.update_ref == f"update-{run_id}", Notice.kind == "failed"
    )
    assert _count(engine, failure_notices) == 0
    taken = select(func.count()).where(
        col(AuditEvent.action).in_(["run.lease_taken", "run.taken_over"]), AuditEvent.subject == subject
    )
    assert _count(engine, taken) == 1  # one process took the crashed run, once
    assert upgrades(lab, cluster) == [1, 1, 1], "every node upgraded once, by its own log"
    states = Counter(str(step.state) for step in steps)
    assert states[StepState.started] == 0, states
    assert states[StepState.failed] == 0, [(s.step, s.output_tail) for s in steps if s.state == "failed"]
    interrupted = [s for s in steps if s.state == StepState.interrupted]
    assert [s.step for s in interrupted] == ["upgrade"], states
    assert "found started by" in interrupted[0].output_tail


@pytest.mark.parametrize("repetition", range(REPETITIONS))
def test_five_concurrent_resumes_of_a_crashed_run_exactly_one_carries_it_out(
    race_lab: Any, engine: Any, prefect_harness: None, tmp_path: Path, record: Any, repetition: int
) -> None:
    import_inventory(race_lab.inventory_path, engine=engine, actor="test")
    env = _cli_env(race_lab, engine, tmp_path / "home")
    cluster = _cluster(race_lab)
    run_id = _crash_mid_second_node(env, cluster, engine)
    last = hosts(race_lab, cluster)[-1]

    with node_busy(race_lab, last):
        procs = [_start(env, "resume", str(run_id)) for _ in range(RESUMERS)]
        _wait_until(procs, RESUMERS - 1)  # the winner cannot end: it waits for the last node
        losers = [p for p in procs if p.poll() is not None]
        outputs = [(p.returncode, *p.communicate()) for p in losers]
    _wait_until(procs, RESUMERS)
    (winner,) = [p for p in procs if p not in losers]
    out, err = winner.communicate()
    assert winner.returncode == 0, out[-2000:] + err[-3000:]

    for code, stdout, stderr in outputs:
        assert code == 2, stdout[-1500:] + stderr[-3000:]
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in stdout + stderr, stderr
        assert f"run {run_id} is being carried out by " in lines[0] and f"`upkeep show {run_id}`" in lines[0]
        assert f":{winner.pid} since " in lines[0], (winner.pid, lines[0])
    _assert_carried_out_once(engine, race_lab, cluster, run_id)
    record(
        "two operators at once",
        f"{RESUMERS} concurrent `upkeep resume` of a run killed mid-upgrade ({engine.dialect.name})",
        detail=f"repetition {repetition + 1} of {REPETITIONS}: 1 carried it out, {RESUMERS - 1} exit 2",
    )


def test_a_dispatcher_take_over_racing_a_manual_resume_one_carries_it_out(
    race_lab: Any, engine: Any, prefect_harness: None, tmp_path: Path, record: Any
) -> None:
    import_inventory(race_lab.inventory_path, engine=engine, actor="test")
    env = _cli_env(race_lab, engine, tmp_path / "home")
    cluster = _cluster(race_lab)
    run_id = _crash_mid_second_node(env, cluster, engine)
    with session_scope(engine) as session:  # the dead process's lease ran out: an orphan for dispatchers
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.lease_until = utcnow() - timedelta(seconds=1)

    with node_busy(race_lab, hosts(race_lab, cluster)[-1]):
        dispatcher = _start(env, "dispatch", "--max-running", "1", "--json")
        resumer = _start(env, "resume", str(run_id))
        _wait_until([dispatcher, resumer], 1)
        first = dispatcher if dispatcher.poll() is not None else resumer
        first_out, first_err = first.communicate()
    _wait_until([dispatcher, resumer], 2)
    second = resumer if first is dispatcher else dispatcher
    second_out, second_err = second.communicate()

    if first is dispatcher:  # the resume won: the dispatcher found no orphan left to take
        assert dispatcher.returncode == 0, first_err[-3000:]
        assert json.loads(first_out)["taken_over"] == []
        assert resumer.returncode == 0, second_out[-2000:] + second_err[-3000:]
        winner = "resume"
    else:  # the dispatcher won: the resume named it and stood down
        assert resumer.returncode == 2, first_out[-2000:] + first_err[-3000:]
        assert f"run {run_id} is being carried out by " in first_err and f":{dispatcher.pid} " in first_err
        assert dispatcher.returncode == 0, second_err[-3000:]
        assert json.loads(second_out)["taken_over"] == [run_id]
        winner = "dispatcher"
    for text in (first_out, first_err, second_out, second_err):
        assert "Traceback" not in text
    _assert_carried_out_once(engine, race_lab, cluster, run_id)
    record(
        "two operators at once",
        f"dispatcher take-over racing `upkeep resume` of an orphaned run ({engine.dialect.name})",
        detail=f"won by the {winner}; the other stood down",
    )


def _temporary_servers(marker: str) -> set[int]:
    """Pids of Prefect temporary servers (uvicorn) whose environment holds `marker`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if b"prefect.server.api.server:create_app" in cmdline and marker.encode() in environ:
            found.add(int(entry.name))
    return found


def _poll(condition: Any, what: str, deadline: float = DEADLINE) -> Any:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"no {what} within {deadline:g} s")


def test_the_temporary_prefect_server_does_not_outlive_a_killed_cli(
    race_lab: Any, sqlite_engine: Any, tmp_path: Path, record: Any
) -> None:
    """Without PREFECT_API_URL the CLI starts Prefect's temporary server as its child. SIGKILL the
    CLI while it carries out an update (held on its last node, so it is surely running): the
    server's pid is gone soon after (polled, bounded), not re-parented to PID 1."""
    import_inventory(race_lab.inventory_path, engine=sqlite_engine, actor="test")
    env = {
        k: v
        for k, v in _cli_env(race_lab, sqlite_engine, tmp_path / "home").items()
        if k != "PREFECT_API_URL"
    }
    marker = f"UPKEEP_ORPHAN_TEST={tmp_path}"
    env.update(
        {
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
            "UPKEEP_ORPHAN_TEST": str(tmp_path),
        }
    )
    cluster = _cluster(race_lab)
    with node_busy(race_lab, hosts(race_lab, cluster)[-1]):
        cli = _start(env, "update", cluster, "--to", TARGET)
        try:
            (server,) = _poll(lambda: _temporary_servers(marker), "temporary Prefect server")
            _poll(
                lambda: upgrades(race_lab, cluster)[0] == 1 or cli.poll() is not None, "first node upgraded"
            )
            assert cli.poll() is None, cli.communicate()
            cli.send_signal(signal.SIGKILL)
            cli.wait(timeout=DEADLINE)
        finally:
            if cli.poll() is None:
                cli.kill()
        _poll(
            lambda: server not in _temporary_servers(marker),
            f"end of the temporary server (pid {server})",
            30,
        )
    record("no orphans", "CLI killed with SIGKILL mid-update: its temporary Prefect server ends with it")
