"""adv60, hostile: a cloud-release run carried over to its next window, at the error budget's edges and
the in-flight limits' (the fleet and helpers of test_cloud_release.py, SQLite and PostgreSQL).

- A run carried over after asking a node its version only (the read `upgrade_node` takes before the
  upgrade: cut by a closed support tunnel, or the window's cutoff right after it) changed nothing: like
  one carried over before its first node (adv51) it waits at a halted rollout and holds no slot.
- max_failures=0 with a run carried over mid-way across a halt, a resume, a second halt and a resume:
  each failure after a resume halts at once; nothing is counted twice or lost.
- A carried-over run that changed a node, then cancelled (or failed) between its windows, gives its
  customer's slot back."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine

from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import NodeStep, RunState, StepState
from tests.integration.test_cloud_release import (
    CANARY,
    EARLY,
    _finish,
    _gate,
    _inventory,
    _last_slot,
    _plan,
    _runs,
    _start,
    _status,
    fleet,
)
from tests.integration.test_cloud_release_carried_over import DAY, _carried_over, _resume, _to_the_broad_ring

__all__ = ["fleet"]


def _carried_over_after_a_check(engine: Engine, name: str, at: datetime) -> None:
    """`name`'s running run carried over at `at` after its first node's version check, cut (interrupted,
    flows/records.py `mark_unknown`): no upgrade step, nothing sent to change the node."""
    _carried_over(engine, name, at, touched=False)
    with session_scope(engine) as session:
        run = _runs(session)[name]
        session.add(NodeStep(run_id=run.id, node_id=None, step="pre-flight", state=StepState.succeeded))
        session.add(NodeStep(run_id=run.id, node_id=None, step="distribute", state=StepState.succeeded))
        session.add(NodeStep(run_id=run.id, node_id=None, step="check", state=StepState.interrupted))
        session.add(NodeStep(run_id=run.id, node_id=None, step="tunnel-wait", state=StepState.succeeded))


def test_a_halted_rollout_starts_no_carried_over_run_that_only_asked_a_version(fleet: Engine) -> None:
    _plan(fleet, max_failures=1, soak_minutes=0)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, CANARY, RunState.succeeded, due + timedelta(minutes=10))
    early_at = due + timedelta(minutes=20)
    _start(fleet, EARLY, early_at)
    _carried_over_after_a_check(fleet, "c05", early_at + timedelta(hours=1))
    _finish(fleet, ["c03", "c04"], RunState.failed, early_at + timedelta(minutes=5))

    later = early_at + DAY + timedelta(hours=1, minutes=1)
    assert "halted" in (_gate(fleet, "c07", later) or "")
    assert "halted" in (_gate(fleet, "c05", later) or ""), _gate(fleet, "c05", later)


def test_a_run_carried_over_after_a_version_check_only_holds_no_slot(fleet: Engine) -> None:
    due = _to_the_broad_ring(fleet)
    _carried_over_after_a_check(fleet, "c07", due + timedelta(hours=1))

    assert _gate(fleet, "c11", due + timedelta(hours=2)) is None  # initech: c07 changed nothing


def test_max_failures_zero_across_two_halts_with_a_run_carried_over_mid_way(fleet: Engine) -> None:
    """Broad ring: c07 carried over mid-way; c08 fails (halt 1, resume); c09, running across that
    resume, fails (halt 2, resume); c07 then fails in its next window (halt 3). Each counted once."""
    _plan(fleet, max_failures=0, soak_minutes=0)
    due = _last_slot(fleet) + timedelta(minutes=1)
    for ring in (CANARY, EARLY):
        _start(fleet, ring, due)
        _finish(fleet, ring, RunState.succeeded, due)
    _start(fleet, ["c07", "c08", "c09"], due)
    _carried_over(fleet, "c07", due + timedelta(hours=1), touched=True)
    _finish(fleet, ["c08"], RunState.failed, due + timedelta(minutes=5))

    t1 = due + timedelta(hours=2)
    assert "halted: 1 failure exceeds the error budget of 0" in (_gate(fleet, "c10", t1) or "")
    assert "1 failure(s) acknowledged" in _resume(fleet, t1)
    budget = _status(fleet)["budget"]
    assert (budget["started"], budget["failed"]) == (2, 0), budget  # c07 and c09 in flight: starts only

    _finish(fleet, ["c09"], RunState.failed, t1 + timedelta(minutes=5))
    assert "halted: 1 failure exceeds" in (_gate(fleet, "c10", t1 + timedelta(minutes=6)) or "")
    assert _gate(fleet, "c07", t1 + timedelta(minutes=6)) is None  # mid-way: goes on, halted or not
    t2 = t1 + timedelta(hours=1)
    assert "2 failure(s) acknowledged" in _resume(fleet, t2)
    budget = _status(fleet)["budget"]
    assert (budget["started"], budget["failed"]) == (1, 0), budget  # c07 only

    at = due + DAY + timedelta(hours=1)  # c07's next window: it fails there
    _start(fleet, ["c07"], at)
    _finish(fleet, ["c07"], RunState.failed, at + timedelta(minutes=5))
    assert "halted: 1 failure exceeds" in (_gate(fleet, "c10", at + timedelta(minutes=6)) or "")
    budget = _status(fleet)["budget"]
    assert (budget["started"], budget["failed"]) == (1, 1), budget


def test_a_carried_over_run_cancelled_between_its_windows_gives_its_slot_back(fleet: Engine) -> None:
    due = _to_the_broad_ring(fleet)
    _carried_over(fleet, "c07", due + timedelta(hours=1), touched=True)
    between = due + timedelta(hours=2)
    assert _gate(fleet, "c11", between) == "1 update of this customer is in flight (limit 1)"
    _finish(fleet, ["c07"], RunState.cancelled, between)
    assert _gate(fleet, "c11", between) is None


def test_a_carried_over_run_s_cluster_cannot_be_moved_to_another_customer_between_windows(
    fleet: Engine, tmp_path: Path
) -> None:
    """c07 (initech) carried over mid-way; an import between its windows moves c07 to umbrella. Refused
    with one line naming the cluster, nothing written: its slot stays initech's (c11 waits), umbrella's
    c08 is free - no slot left behind, none counted twice."""
    due = _to_the_broad_ring(fleet)
    _carried_over(fleet, "c07", due + timedelta(hours=1), touched=True)
    inventory = _inventory()
    moved = next(c for c in inventory["customers"][2]["clusters"] if c["name"] == "c07")
    inventory["customers"][2]["clusters"].remove(moved)
    inventory["customers"][3]["clusters"].append(moved)
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    with pytest.raises(Exception, match="an import does not move a cluster to another customer"):
        import_inventory(path, engine=fleet, actor="test")

    between = due + timedelta(hours=2)
    assert _gate(fleet, "c11", between) == "1 update of this customer is in flight (limit 1)"
    assert _gate(fleet, "c08", between) is None


def test_a_gate_that_waited_for_the_rollout_lock_reads_the_resume_that_held_it(
    fleet: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, two dispatchers and an SRE. max_failures=1; c03 and c04 (early) failed. Dispatcher A
    asks the gate about c07: it finds c07's rollout (no lock yet). Meanwhile dispatcher B's gate (c08)
    halts the rollout and the SRE resumes it (2 failures acknowledged), both committed. A then locks the
    rollout row (FOR UPDATE) - and must decide on what it locked: rolling, the failures acknowledged, so
    c07 may start. It decided on the rollout as it had read it before the lock (the ORM keeps an object
    it has already loaded), counted the acknowledged failures again and halted the release right after
    the SRE's resume."""
    if fleet.dialect.name != "postgresql":
        pytest.skip("SQLite's BEGIN IMMEDIATE serialises the whole gate: no interleaving")
    import flows.rollout as rollout_module

    _plan(fleet, max_failures=1, soak_minutes=0)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, CANARY, RunState.succeeded, due)
    _start(fleet, EARLY, due)
    _finish(fleet, ["c03", "c04"], RunState.failed, due)
    _finish(fleet, ["c05", "c06"], RunState.succeeded, due)
    later = due + timedelta(minutes=5)

    found, meanwhile, first = rollout_module.rollout_of_run, [], [True]

    def then_b_and_the_sre(run_id: int, *, session: Any) -> Any:
        result = found(run_id, session=session)
        if first.pop() if first else False:  # A's gate only, not B's
            meanwhile.append(_gate(fleet, "c08", later))  # B: halts (its own transaction)
            meanwhile.append(_resume(fleet, later))  # the SRE
        return result

    monkeypatch.setattr(rollout_module, "rollout_of_run", then_b_and_the_sre)
    assert _gate(fleet, "c07", later) is None, meanwhile
    assert "halted" in (meanwhile[0] or "") and "2 failure(s) acknowledged" in meanwhile[1]
    assert not _status(fleet)["halted"]


def test_a_dispatcher_s_gate_counts_a_run_another_dispatcher_started_after_it_read_its_batch(
    fleet: Engine,
) -> None:
    """PostgreSQL, two dispatchers, one update per customer at once. Dispatcher B reads its batch of due
    runs (c07 and c11, both initech's, planned: flows/dispatch.py `_claim_many` reads the batch before
    any gate). Dispatcher A starts c07 and commits. B's gate then asks about c11 under the rollout's lock:
    c07 is in flight, c11 must wait. The gate counted c07 as B's batch had read it (planned: the ORM
    keeps an object it has already loaded) and let c11 start - two initech clusters in flight, limit 1."""
    if fleet.dialect.name != "postgresql":
        pytest.skip("SQLite's BEGIN IMMEDIATE serialises the dispatchers: no interleaving")
    from sqlmodel import select

    from flows.rollout import start_gate
    from inventory.models import UpgradeRun

    _plan(fleet, soak_minutes=0, per_customer_limit=1)
    due = _last_slot(fleet) + timedelta(minutes=1)
    for ring in (CANARY, EARLY):
        _start(fleet, ring, due)
        _finish(fleet, ring, RunState.succeeded, due)
    with session_scope(fleet) as b:
        batch = b.exec(select(UpgradeRun).where(UpgradeRun.state == RunState.planned)).all()
        c11 = _runs(b)["c11"]
        assert c11 in batch
        _start(fleet, ["c07"], due)  # dispatcher A, committed
        assert start_gate(c11, session=b, now=due) == "1 update of this customer is in flight (limit 1)"


def test_two_resumes_at_once_resume_once(fleet: Engine) -> None:
    """Two `release resume` at once (both DBs: PostgreSQL's FOR UPDATE, SQLite's BEGIN IMMEDIATE): one
    resumes, the other is told the rollout is not halted; one audit event, the acknowledgement once."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlmodel import select

    from inventory.models import AuditEvent

    _plan(fleet, max_failures=0, soak_minutes=0)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, ["c01"], RunState.failed, due)
    assert "halted" in (_gate(fleet, "c03", due) or "")

    def resume() -> str:
        try:
            return _resume(fleet, due + timedelta(minutes=1))
        except Exception as refused:
            return f"refused: {refused}"

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(lambda _: resume(), range(2)))
    assert answers[0].startswith("refused: release 9.10.0 rollout is rolling, not halted"), answers
    assert "1 failure(s) acknowledged" in answers[1], answers
    with session_scope(fleet) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "rollout.resumed")).all()
    assert len(events) == 1
