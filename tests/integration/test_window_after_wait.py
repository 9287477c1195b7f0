"""No contact with a customer's nodes once their window has no room left, when a long wait before the first
node ended: the approval gate (an answer can come days later) and the wait for a slot of the fleet cluster
limit (hours). Before, an approval given past the cutoff made the run copy the package onto every node
over SSH, outside the customer's maintenance window, and only the first node's check carried it over; a
slot granted past it made the run download, pre-flight every node and copy first. Now either carries the
run over at once: nothing copied, no node contacted again, the customer told nothing was changed, the
approval standing for the next window. A run without a window (an SRE's `upkeep update`) goes on as before.

Flows in-process (threads, as the dispatcher runs them) on the lab and the session's Prefect server, with
an injected clock that the test moves while the run waits; windows and planned runs as test_windows.py
makes them, the cluster limit of test_cluster_slot_stop.py."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from flows.dispatch import dispatch
from flows.product_update import product_update
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import NodeStep, RunState, UpgradeRun
from inventory.outbox import Notice
from tests.integration.conftest import nodes_of
from tests.integration.test_cluster_slot_stop import BEFORE_ASK, _active_slots, _flow, _wait_for, one_slot
from tests.integration.test_update_control import _flow_run_paused
from tests.integration.test_windows import NODE, TARGET, TUE, WED, _planned, _run, _upgrades, _windows
from upkeep.updates import approve_run

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
__all__ = ["one_slot"]  # the fixture, used here by name
LATE = TUE + timedelta(minutes=55)  # 5 minutes left of Tuesday's hour: no node of 10 fits


def _clocked(runtime: Any, cluster: str) -> list[datetime]:
    """Tuesday and Wednesday windows of an hour at 03:00 UTC, nodes of 10 minutes, and the runtime's
    clock reading the returned cell (03:05 on Tuesday: inside the window, room for every node)."""
    _windows(runtime.engine, cluster, (["tue", "wed"], 60))
    runtime.per_node_estimate = NODE
    now = [TUE + timedelta(minutes=5)]
    runtime.clock = lambda: now[0]
    return now


def _announced(runtime: Any, run_id: int) -> int:
    """`run_id` with its 'scheduled' notice queued, as flows/schedule.py does: a carry-over tells only a
    customer told of the update (flows/endings.py `customer_knows`)."""
    from flows.run_notices import VendorTerms, queue_run_notice

    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.slot_start is not None
        vendor = VendorTerms.from_runtime(runtime)
        assert queue_run_notice(
            run, "scheduled", session=session, now=run.slot_start - timedelta(days=5), vendor=vendor
        )
    return run_id


def _steps(engine: Any, run_id: int) -> list[str]:
    with session_scope(engine) as session:
        query = select(NodeStep.step).where(NodeStep.run_id == run_id).order_by(col(NodeStep.id))
        return list(session.exec(query))


def _customer_notices(engine: Any, run_id: int, sre: str) -> list[Notice]:
    with session_scope(engine) as session:
        query = select(Notice).where(col(Notice.update_ref) == f"update-{run_id}").order_by(col(Notice.id))
        return [notice for notice in session.exec(query) if sre not in notice.recipients]


def _carried_over_untouched(lab: Any, runtime: Any, cluster: str, run_id: int, waited: str) -> UpgradeRun:
    """The run carried over to Wednesday with no node touched and nothing staged on any node; the
    customer sent only the 'rescheduled' notice saying nothing was changed; the SRE told why."""
    steps = _steps(runtime.engine, run_id)
    assert not {"distribute", "check", "upgrade"} & set(steps), steps
    assert _upgrades(lab, cluster) == [0, 0, 0]
    for node in nodes_of(lab, cluster):  # the package reached no node
        for where in ("incoming", "staged"):
            folder = lab.node_dir(node["hostname"]) / where
            assert not folder.is_dir() or not list(folder.iterdir()), (node["hostname"], where)
    run = _run(runtime.engine, run_id)
    assert run.state == RunState.planned, (run.state, run.reason)
    assert run.slot_start == WED and (run.window_start, run.window_end) == (WED, WED + timedelta(hours=1))
    assert waited in run.reason and "no room left" in run.reason, run.reason
    [notice] = [
        n for n in _customer_notices(runtime.engine, run_id, runtime.sre_email) if n.kind != "scheduled"
    ]
    assert notice.kind == "rescheduled" and "Nothing was changed" in notice.body_text, notice.body_text
    with session_scope(runtime.engine) as session:
        [alert] = session.exec(
            select(Alert).where(Alert.run_id == run_id, Alert.kind == "carried-over")
        ).all()
        assert waited in alert.body_text, alert.body_text
    return run


def test_an_approval_after_the_window_has_no_room_carries_over_untouched_and_stands_for_the_next(
    lab: Any, fresh_cluster: str, lab_runtime: Any
) -> None:
    runtime, cluster = lab_runtime, fresh_cluster
    now = _clocked(runtime, cluster)
    runtime.approval_timeout = 120.0  # a gate asked again in the next window fails the test, not hangs it
    run_id = _announced(runtime, _planned(runtime.engine, cluster, TUE, TUE + 3 * NODE))
    with session_scope(runtime.engine) as session:
        row = session.get(UpgradeRun, run_id)
        assert row is not None
        row.needs_approval = True
    results: dict[str, Any] = {}
    started: list[threading.Thread] = []
    gate = _flow(cluster, run_id, "run-gated", started, results)
    _wait_for(lambda: _flow_run_paused(_run(runtime.engine, run_id).flow_run_id), "the approval pause")
    assert _steps(runtime.engine, run_id)[-1] == "approval"  # downloaded and pre-flighted in the window

    now[0] = LATE  # the answer comes when 5 minutes are left
    approve_run(run_id, engine=runtime.engine, approved=True, reason="CHG-7", actor="sre-ann")
    gate.join(timeout=120)
    assert not gate.is_alive()

    assert results["run-gated"].result()["state"] == "carried over"
    run = _carried_over_untouched(lab, runtime, cluster, run_id, "approved at 2026-11-24 03:55 UTC")
    assert _steps(runtime.engine, run_id)[-1] == "approval"  # nothing on any node after the gate
    assert run.approved_by == "sre-ann" and run.needs_approval

    # Wednesday's window: the dispatcher starts it, and it goes without asking again
    now[0] = WED + timedelta(minutes=1)
    assert dispatch(max_running=1)["started"] == [run_id]
    run = _run(runtime.engine, run_id)
    assert run.state == RunState.succeeded, (run.state, run.reason)
    assert _upgrades(lab, cluster) == [1, 1, 1]
    assert _steps(runtime.engine, run_id).count("approval") == 1


def test_a_cluster_slot_granted_after_the_window_has_no_room_carries_over_before_any_download(
    lab: Any, fresh_cluster: str, lab_runtime: Any, one_slot: tuple[str, list[str]]
) -> None:
    """The run waited for a slot until 5 minutes were left (the clock moved as it asks): granted, the
    slot is given back at once and the run carried over, nothing downloaded, no node pre-flighted."""
    runtime, cluster, (limit, asked) = lab_runtime, fresh_cluster, one_slot
    now = _clocked(runtime, cluster)
    run_id = _announced(runtime, _planned(runtime.engine, cluster, TUE, TUE + 3 * NODE))
    BEFORE_ASK["run-late"] = lambda: now.__setitem__(0, LATE)
    results: dict[str, Any] = {}
    started: list[threading.Thread] = []
    run = _flow(cluster, run_id, "run-late", started, results)
    run.join(timeout=120)
    assert not run.is_alive() and asked == ["run-late"]

    assert results["run-late"].result()["state"] == "carried over"
    waited = f"waited for a slot of the cluster limit {limit!r} until 2026-11-24 03:55 UTC"
    _carried_over_untouched(lab, runtime, cluster, run_id, waited)
    assert _steps(runtime.engine, run_id) == []  # not even the download
    _wait_for(lambda: _active_slots(limit) == 0, "the limit's slot given back")


def test_a_run_started_past_the_cutoff_downloads_nothing_copies_nothing_and_tells_no_start(
    lab: Any, fresh_cluster: str, lab_runtime: Any
) -> None:
    """No approval needed, no cluster limit, and the window has no room left when the run is taken up (a
    take-over or resume late in the window): before, the package was copied to every node, the customer
    told the update 'started' and then 'partially done (0 of 3 nodes)'; then (adv35) it was downloaded and
    every node pre-flighted over SSH before the after-gate look carried it over. Now it is carried over
    before the download: no step at all, and the customer hears only that nothing was changed. (A
    pre-flight that itself ends past the cutoff: tests/unit/test_update_branches.py.)"""
    runtime, cluster = lab_runtime, fresh_cluster
    now = _clocked(runtime, cluster)
    now[0] = LATE
    run_id = _announced(runtime, _planned(runtime.engine, cluster, TUE, TUE + 3 * NODE))
    results: dict[str, Any] = {}
    _flow(cluster, run_id, "run-late-start", [], results).join(timeout=120)

    assert results["run-late-start"].result()["state"] == "carried over"
    _carried_over_untouched(lab, runtime, cluster, run_id, "taken up at 2026-11-24 03:55 UTC")
    assert _steps(runtime.engine, run_id) == []  # not even the download


def test_a_run_without_a_window_goes_on_after_a_late_approval(
    lab: Any, fresh_cluster: str, lab_runtime: Any
) -> None:
    """An SRE's `upkeep update --require-approval` has no window: an approval at any hour lets it go on,
    as before (no cutoff applies to it)."""
    runtime, cluster = lab_runtime, fresh_cluster
    now = _clocked(runtime, cluster)
    runtime.approval_timeout = 120.0
    results: dict[str, Any] = {}

    def update() -> None:
        results["update"] = product_update(cluster=cluster, to_version=TARGET, require_approval=True)

    flow = threading.Thread(target=update, name="run-update", daemon=True)
    flow.start()

    def gated() -> int:
        with session_scope(runtime.engine) as session:
            run = session.exec(select(UpgradeRun).where(col(UpgradeRun.flow_run_id).is_not(None))).first()
            return run.id or 0 if run is not None and _flow_run_paused(run.flow_run_id) else 0

    run_id = _wait_for(gated, "the approval pause")
    now[0] = LATE
    approve_run(run_id, engine=runtime.engine, approved=True, reason="CHG-8", actor="sre-ann")
    flow.join(timeout=120)
    assert not flow.is_alive()

    assert results["update"]["state"] == "succeeded", results
    assert _run(runtime.engine, run_id).state == RunState.succeeded
    assert _upgrades(lab, cluster) == [1, 1, 1]
