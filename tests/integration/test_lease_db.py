"""Run leases on SQLite and PostgreSQL (flows/lease.py): what counts as orphaned, the take-over that
only one dispatcher wins, the flow's own claim, and the heartbeat that renews and clears a lease."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from flows import lease
from inventory.db import session_scope
from inventory.models import AuditEvent, Cluster, Customer, RunState, UpgradeRun
from inventory.runs import create_run

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


def _runs(engine: Any, leases: list[tuple[RunState, str | None, datetime | None]]) -> list[int]:
    """One cluster and run per entry, in that state with that lease."""
    ids = []
    with session_scope(engine) as session:
        customer = Customer(name="acme", timezone="UTC")
        session.add(customer)
        session.flush()
        for number, (state, owner, until) in enumerate(leases, 1):
            cluster = Cluster(customer_id=customer.id or 0, name=f"c{number}", version="9.8.0")
            session.add(cluster)
            session.flush()
            run = create_run(
                cluster, to_version="9.10.0", source="schedule", requested_by="t", session=session
            )
            run.state, run.lease_owner, run.lease_until = state, owner, until
            session.add(run)
            session.flush()
            ids.append(run.id or 0)
    return ids


def _run(engine: Any, run_id: int) -> UpgradeRun:
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        return run


def test_only_running_runs_whose_lease_ran_out_are_orphans_and_they_do_not_count(engine: Any):
    gone, _live, _unleased, _paused, edge = _runs(
        engine,
        [
            (RunState.running, "h:1/a", NOW - timedelta(seconds=1)),
            (RunState.running, "h:2/b", NOW + timedelta(seconds=1)),
            (RunState.running, None, None),
            (RunState.paused, "h:3/c", NOW - timedelta(hours=1)),  # its flow ended: not an orphan
            (RunState.running, "h:4/d", NOW),
        ],
    )
    with session_scope(engine) as session:
        assert [run.id for run in lease.orphans(session, NOW, skip=set())] == [gone, edge]
        assert [run.id for run in lease.orphans(session, NOW, skip={gone})] == [edge]
        assert lease.count_live(session, NOW) == 2  # the live and the unleased one


def test_a_take_over_is_won_once_and_names_the_old_owner(engine: Any):
    (run_id,) = _runs(engine, [(RunState.running, "deadhost:42/0a0a0a", NOW - timedelta(minutes=1))])
    stale = _run(engine, run_id)  # what every dispatcher read before any of them moved

    results: list[bool] = []
    barrier = threading.Barrier(6)

    def dispatcher(number: int) -> None:
        barrier.wait()
        with session_scope(engine) as session:
            results.append(
                lease.take_over(
                    session, stale, now=NOW, owner=f"d{number}", until=NOW + LEASE, actor=f"d{number}"
                )
            )

    threads = [threading.Thread(target=dispatcher, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 5 + [True]
    run = _run(engine, run_id)
    assert run.lease_owner in {f"d{n}" for n in range(6)} and run.lease_until == NOW + LEASE
    with session_scope(engine) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "run.taken_over")).all()
    assert len(events) == 1 and events[0].subject == f"run/{run_id}"
    assert events[0].detail["previous_owner"] == "deadhost:42/0a0a0a"
    assert events[0].detail["owner"] == run.lease_owner


def test_a_live_lease_is_not_taken_over(engine: Any):
    (run_id,) = _runs(engine, [(RunState.running, "h:1/a", NOW + timedelta(seconds=1))])
    with session_scope(engine) as session:
        took = lease.take_over(
            session, _run(engine, run_id), now=NOW, owner="other", until=NOW + LEASE, actor="t"
        )
    assert took is False and _run(engine, run_id).lease_owner == "h:1/a"


def _runtime(engine: Any, clock: Any = lambda: NOW, run_lease: timedelta = LEASE) -> Any:
    return SimpleNamespace(engine=engine, clock=clock, run_lease=run_lease)


def test_a_flow_started_under_a_claim_that_was_taken_over_leaves_the_run_alone(engine: Any):
    (run_id,) = _runs(engine, [(RunState.running, "new-owner", NOW + LEASE)])
    refused = pytest.raises(lease.LeaseHeld, match=r"held by new-owner until .* not by old-claim")
    with refused, session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        lease.acquire(session, run, _runtime(engine), expected="old-claim", actor="t")
    assert _run(engine, run_id).lease_owner == "new-owner"


def test_a_flow_takes_its_own_claim_a_lapsed_one_or_one_whose_process_is_gone(engine: Any):
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_owner = f"{socket.gethostname()}:{int(gone.stdout)}/0b0b0b"  # that pid has exited
    mine, lapsed, dead = _runs(
        engine,
        [
            (RunState.running, "claim", NOW + LEASE),
            (RunState.running, "someone", NOW - timedelta(seconds=1)),
            (RunState.running, dead_owner, NOW + LEASE),
        ],
    )
    owners = {}
    for run_id, expected in ((mine, "claim"), (lapsed, "other-claim"), (dead, None)):
        with session_scope(engine) as session:
            run = session.get(UpgradeRun, run_id)
            assert run is not None
            owners[run_id] = lease.acquire(session, run, _runtime(engine), expected=expected, actor="sre")
    for run_id, owner in owners.items():
        run = _run(engine, run_id)
        assert (run.lease_owner, run.lease_until, run.lease_since) == (owner, NOW + LEASE, NOW)
    with session_scope(engine) as session:
        taken = session.exec(select(AuditEvent).where(AuditEvent.action == "run.lease_taken")).all()
    assert [(e.subject, e.detail["previous_owner"]) for e in taken] == [(f"run/{dead}", dead_owner)]


def test_a_live_holder_keeps_its_run_whoever_asks(engine: Any):
    """No owner displaces a live one: not a flow started without a claim, not `upkeep resume`'s
    claim; the refusal names the holder (host:pid) and since when."""
    import socket

    live = f"{socket.gethostname()}:1/0c0c0c"  # pid 1 is alive
    held, elsewhere = _runs(
        engine, [(RunState.running, live, NOW + LEASE), (RunState.running, "far:99/0d", NOW + LEASE)]
    )
    for run_id, holder in ((held, f"{socket.gethostname()}:1"), (elsewhere, "far:99")):
        refused = pytest.raises(lease.LeaseHeld, match=rf"run {run_id} is being carried out by {holder}")
        with refused, session_scope(engine) as session:
            run = session.get(UpgradeRun, run_id)
            assert run is not None
            lease.acquire(session, run, _runtime(engine), expected=None, actor="sre")
        with (
            pytest.raises(lease.LeaseHeld, match=rf"`upkeep show {run_id}`"),
            session_scope(engine) as session,
        ):
            lease.claim(session, run_id, now=NOW, lease=LEASE, actor="sre")
    assert (_run(engine, held).lease_owner, _run(engine, elsewhere).lease_owner) == (live, "far:99/0d")


def _wait_for(condition: Any) -> None:
    """Polls until `condition()`; the test fails on the value below if it never comes (no time assert)."""
    import time

    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_heartbeat_renews_on_the_runtime_clock_and_clears_when_the_run_ended(engine: Any):
    (run_id,) = _runs(engine, [(RunState.running, "me", NOW)])
    ticks = iter(NOW + timedelta(seconds=n) for n in range(1, 1_000_000))
    runtime = _runtime(engine, clock=lambda: next(ticks), run_lease=timedelta(seconds=0.5))

    with lease.hold(runtime, run_id, "me") as beat:
        _wait_for(lambda: (_run(engine, run_id).lease_until or NOW) > NOW + timedelta(seconds=2))
        assert (_run(engine, run_id).lease_until or NOW) > NOW + timedelta(seconds=2)  # renewed, twice+
        assert beat.held()
    assert _run(engine, run_id).lease_owner == "me"  # still `running`: the lease stays, to run out

    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.state = RunState.succeeded
    with lease.hold(runtime, run_id, "me"):
        pass
    ended = _run(engine, run_id)
    assert (ended.lease_owner, ended.lease_until) == (None, None)


def test_a_heartbeat_whose_lease_was_taken_stops_and_says_it_is_not_held(engine: Any):
    (run_id,) = _runs(engine, [(RunState.running, "me", NOW)])
    runtime = _runtime(engine, run_lease=timedelta(seconds=0.5))
    with lease.hold(runtime, run_id, "me") as beat:
        with session_scope(engine) as session:
            run = session.get(UpgradeRun, run_id)
            assert run is not None
            run.lease_owner = "taker"
        assert not beat.held()
        _wait_for(lambda: not beat._thread.is_alive())
        assert not beat._thread.is_alive()
    assert _run(engine, run_id).lease_owner == "taker"  # the old owner's end leaves it alone


def test_a_claim_of_a_run_that_already_ended_says_so_and_changes_nothing(engine: Any):
    (run_id,) = _runs(engine, [(RunState.succeeded, None, None)])
    ended = pytest.raises(lease.NotResumable, match=rf"run {run_id} already succeeded.*nothing to resume")
    with ended, session_scope(engine) as session:
        lease.claim(session, run_id, now=NOW, lease=LEASE, actor="sre")
    assert _run(engine, run_id).lease_owner is None


def test_a_claim_takes_a_run_whose_holder_s_pid_went_to_a_process_started_since_and_no_live_holder(
    engine: Any,
):
    """`upkeep resume` (claim) and a flow without a claim (acquire) displace a holder whose pid is
    another process's now (killed long ago: a `sleep` started after its lease has the pid) before its
    lease runs out, as they do a holder whose pid is free; never a live holder - a child that took its
    own lease - whatever the clock says: NOW, the lease's `lease_since`, is fixed weeks before the
    holder's real start, which a rule comparing the two would take for a pid reused since the lease."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc to read a process's start from here")
    host = socket.gethostname()
    code = "from flows.lease import new_owner; print(new_owner(), flush=True); import time; time.sleep(600)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with (
        subprocess.Popen(["sleep", "600"]) as stranger,
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) as holder,
    ):
        try:
            assert holder.stdout is not None
            live = holder.stdout.readline().strip()
            dead = lease.new_owner().replace(f":{os.getpid()}@", f":{stranger.pid}@", 1)
            reused_a, reused_b, held = _runs(
                engine,
                [(RunState.running, dead, NOW + LEASE)] * 2 + [(RunState.running, live, NOW + LEASE)],
            )
            with session_scope(engine) as session:
                mine = lease.claim(session, reused_a, now=NOW, lease=LEASE, actor="sre")
            with session_scope(engine) as session:
                run = session.get(UpgradeRun, reused_b)
                assert run is not None
                flows = lease.acquire(session, run, _runtime(engine), expected=None, actor="sre")
            assert (_run(engine, reused_a).lease_owner, _run(engine, reused_b).lease_owner) == (mine, flows)
            with session_scope(engine) as session:  # as a process under that fixed clock writes it
                session.execute(update(UpgradeRun).where(col(UpgradeRun.id) == held).values(lease_since=NOW))
            with (
                pytest.raises(lease.LeaseHeld, match=rf"carried out by {host}:{holder.pid} since"),
                session_scope(engine) as session,
            ):
                lease.claim(session, held, now=NOW, lease=LEASE, actor="t")
            with pytest.raises(lease.LeaseHeld), session_scope(engine) as session:
                run = session.get(UpgradeRun, held)
                assert run is not None
                lease.acquire(session, run, _runtime(engine), expected=None, actor="t")
            assert _run(engine, held).lease_owner == live
        finally:
            stranger.kill()
            holder.kill()


def test_a_claim_leaves_a_run_whose_holder_s_pid_cannot_be_seen_from_here_until_its_lease_runs_out(
    engine: Any,
):
    """A holder with this host name whose birth is from another space (a pod's other container, or this
    machine before a reboot): its pid means nothing here. Its pid being free here made it read gone, and
    `upkeep resume` (claim) and a flow without a claim (acquire) took over a run its process may still
    be carrying out. They refuse, saying its process cannot be seen from here, until its lease runs out;
    then the claim takes it (the cost: after a reboot a run waits out its lease)."""
    import socket
    import subprocess

    with subprocess.Popen(["true"]) as gone:
        pass
    host = socket.gethostname()
    unseen = f"{host}:{gone.pid}@1.000000000000/abc123"
    run_id, other = _runs(engine, [(RunState.running, unseen, NOW + LEASE)] * 2)
    refused = rf"carried out by {host}:{gone.pid} .*cannot be seen from here"
    with pytest.raises(lease.LeaseHeld, match=refused), session_scope(engine) as session:
        lease.claim(session, run_id, now=NOW, lease=LEASE, actor="sre")
    with pytest.raises(lease.LeaseHeld, match=refused), session_scope(engine) as session:
        run = session.get(UpgradeRun, other)
        assert run is not None
        lease.acquire(session, run, _runtime(engine), expected=None, actor="sre")
    assert (_run(engine, run_id).lease_owner, _run(engine, other).lease_owner) == (unseen, unseen)
    with session_scope(engine) as session:
        mine = lease.claim(session, run_id, now=NOW + LEASE, lease=LEASE, actor="sre")
    assert _run(engine, run_id).lease_owner == mine


def test_the_dispatch_progress_follows_the_runs_this_process_holds_under_the_owner_it_writes(
    engine: Any, monkeypatch: pytest.MonkeyPatch
):
    """`upkeep dispatch` shows the progress of the runs its own process took (upkeep/progress.py
    `runs_held_by_this_process`), found by the owner's `host:pid/` prefix: an owner with a birth
    (`host:pid@ticks.space/random`) never starts so, and the progress stayed empty. Found: this
    process's owners, with its birth or (where /proc cannot be read) without; not another process's
    with this pid (another container, another boot), nor a host name that only LIKE's `_` matches."""
    import os
    import socket

    from upkeep.progress import runs_held_by_this_process

    monkeypatch.setattr(socket, "gethostname", lambda: "db_7")
    pid = os.getpid()
    mine, mine_old, *_not_mine = _runs(
        engine,
        [
            (RunState.running, lease.new_owner(), NOW + LEASE),
            (RunState.running, f"db_7:{pid}/abc123", NOW + LEASE),
            (RunState.running, f"db_7:{pid}@1.000000000000/abc123", NOW + LEASE),
            (RunState.running, f"dbx7:{pid}/abc123", NOW + LEASE),
            (RunState.running, f"db_7:{pid}1/abc123", NOW + LEASE),
        ],
    )
    assert lease.new_owner().startswith(f"db_7:{pid}@") or not os.path.exists("/proc/self/stat")
    with session_scope(engine) as session:
        assert runs_held_by_this_process()(session) == [mine, mine_old]


def test_an_owner_under_the_longest_host_name_linux_allows_fits_the_lease_column(
    engine: Any, monkeypatch: pytest.MonkeyPatch
):
    """The birth made owners longer (`host:pid@ticks.space/random`); PostgreSQL refuses a value longer
    than `lease_owner`'s varchar, and every claim would fail. Linux's host name is 64 bytes at most
    (HOST_NAME_MAX): under such a name a claim is written and read back whole (both databases), and
    the longest owner possible - pid_max's 7 digits, 20 digits of ticks - still fits the column."""
    import socket

    longest = "h" * 63 + "x"
    monkeypatch.setattr(socket, "gethostname", lambda: longest)
    (run_id,) = _runs(engine, [(RunState.planned, None, None)])
    with session_scope(engine) as session:
        owner = lease.claim(session, run_id, now=NOW, lease=LEASE, actor="sre")
    assert owner.startswith(f"{longest}:") and _run(engine, run_id).lease_owner == owner
    worst = f"{longest}:4194304@{'9' * 20}.{'f' * 12}/{'f' * 6}"
    column = UpgradeRun.__table__.c.lease_owner  # type: ignore[attr-defined]
    assert len(worst) <= column.type.length, (len(worst), column.type.length)
    with session_scope(engine) as session:
        session.execute(update(UpgradeRun).where(col(UpgradeRun.id) == run_id).values(lease_owner=worst))
    assert _run(engine, run_id).lease_owner == worst
