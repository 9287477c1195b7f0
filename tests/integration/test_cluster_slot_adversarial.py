"""Adversarial pass (adv34) on the wait for a slot of the fleet cluster limit (UPKEEP_CLUSTER_LIMIT):
a run taken over by another process (the dispatcher's take-over of a lease that ran out while this
process stood still, `upkeep resume`) while it waits for a slot is no longer this process's. It must
neither record the run's ending (a cancel seen by both would be told twice) nor, once granted a slot,
go on with the download, pre-flight and copy of a run another process carries out.

Flows in-process (threads, as the dispatcher runs them) on the lab and the session's Prefect server;
the limit and helpers of test_cluster_slot_stop.py."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from inventory.types import utcnow
from tests.integration.test_cluster_slot_stop import (
    BEFORE_ASK,
    TARGET,
    _active_slots,
    _b_behind_a,
    _cleared,
    _flow,
    _held_run,
    _planned,
    _run,
    _steps,
    _upgrades,
    _wait_for,
    one_slot,
)
from upkeep.updates import request_stop

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
__all__ = ["one_slot"]  # the fixture, used here by name
ELSEWHERE = "elsewhere:1/abcdef"


def _take_over(engine: Any, run_id: int) -> None:
    """Another process takes the run over (as the dispatcher does once its lease ran out)."""
    with session_scope(engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(UpgradeRun.id == run_id)  # type: ignore[arg-type]
            .values(lease_owner=ELSEWHERE, lease_until=utcnow() + timedelta(hours=1), lease_since=utcnow())
        )


def _alerts(engine: Any, run_id: int) -> list[str]:
    with session_scope(engine) as session:
        return [a.kind for a in session.exec(select(Alert).where(Alert.run_id == run_id))]


def test_a_run_taken_over_while_waiting_for_a_slot_leaves_a_cancel_to_its_new_owner(
    lab: Any,
    fresh_cluster: str,
    second_fresh_cluster: str,
    lab_runtime: Any,
    one_slot: tuple[str, list[str]],
) -> None:
    engine, (limit, asked) = lab_runtime.engine, one_slot
    a_id, a_host = _held_run(lab, engine, fresh_cluster)
    b_id = _planned(engine, second_fresh_cluster)
    results: dict[str, Any] = {}
    with _cleared(lab, a_host) as started:
        a, b = _b_behind_a(
            engine, asked, started, (fresh_cluster, a_id), (second_fresh_cluster, b_id), results
        )

        _take_over(engine, b_id)
        request_stop(b_id, "cancel", engine=engine, actor="sre", reason="customer froze changes")
        _wait_for(lambda: not b.is_alive(), "B's old process to end while A still holds the slot")

        # the new owner honours the cancel and tells it, once; the process that lost the run records nothing
        ended = _run(engine, b_id)
        assert ended.state == RunState.running, (ended.state, ended.reason)
        assert ended.lease_owner == ELSEWHERE
        assert _alerts(engine, b_id) == []
        assert results["run-b"].result()["state"] == "taken over"
        assert _steps(engine, b_id) == [] and _upgrades(lab, second_fresh_cluster) == [0, 0, 0]
        assert a.is_alive() and _active_slots(limit) == 1

        lab.fault(a_host, "clear")
        _wait_for(lambda: not a.is_alive(), "A to finish", timeout=120)
    assert _run(engine, a_id).state == RunState.succeeded
    _wait_for(lambda: _active_slots(limit) == 0, "the limit's slots back to 0")


def test_a_run_taken_over_as_its_slot_is_granted_gives_it_back_before_any_download(
    lab: Any, fresh_cluster: str, lab_runtime: Any, one_slot: tuple[str, list[str]]
) -> None:
    """The take-over lands after the run's last look and before its ask, which is granted (the limit is
    free): the slot goes back at once, nothing downloaded, pre-flighted or copied by the process that
    lost the run. Before, it did all three (holding the one slot meanwhile) and stopped only before the
    first node."""
    engine, (limit, asked) = lab_runtime.engine, one_slot
    run_id = _planned(engine, fresh_cluster)
    BEFORE_ASK["run-c"] = lambda: _take_over(engine, run_id)
    started: list[threading.Thread] = []
    results: dict[str, Any] = {}
    run = _flow(fresh_cluster, run_id, "run-c", started, results)
    run.join(timeout=120)
    assert not run.is_alive() and asked == ["run-c"]

    assert results["run-c"].result()["state"] == "taken over"
    assert _run(engine, run_id).state == RunState.running
    assert _steps(engine, run_id) == [] and _upgrades(lab, fresh_cluster) == [0, 0, 0]
    _wait_for(lambda: _active_slots(limit) == 0, "the limit's slot given back")


def test_of_two_runs_waiting_on_a_limit_of_one_exactly_one_goes_when_the_slot_frees(
    lab: Any,
    fresh_cluster: str,
    second_fresh_cluster: str,
    third_fresh_cluster: str,
    lab_runtime: Any,
    one_slot: tuple[str, list[str]],
) -> None:
    """A holds the one slot; B and C wait (both held mid-upgrade too once they go). A ends: exactly one
    of B and C goes, the other keeps asking and is refused while the first holds the slot, and is
    then cancelled with nothing done. The limit's active slots follow the runs that hold one."""
    engine, (limit, asked) = lab_runtime.engine, one_slot
    a_id, a_host = _held_run(lab, engine, fresh_cluster)
    b_id, b_host = _held_run(lab, engine, second_fresh_cluster)
    c_id, c_host = _held_run(lab, engine, third_fresh_cluster)
    results: dict[str, Any] = {}
    with _cleared(lab, a_host) as started, _cleared(lab, b_host), _cleared(lab, c_host):
        a = _flow(fresh_cluster, a_id, "run-a", started, results)
        _wait_for(lambda: ("upgrade", "started") in _steps(engine, a_id), "A's first upgrade under way")
        flows = {b_id: _flow(second_fresh_cluster, b_id, "run-b", started, results)}
        flows[c_id] = _flow(third_fresh_cluster, c_id, "run-c", started, results)
        _wait_for(lambda: "run-b" in asked and "run-c" in asked, "B and C asking for a slot")
        assert _steps(engine, b_id) == [] and _steps(engine, c_id) == [] and _active_slots(limit) == 1

        lab.fault(a_host, "clear")
        _wait_for(lambda: not a.is_alive(), "A to finish", timeout=120)

        def going() -> list[int]:
            return [run for run in (b_id, c_id) if ("upgrade", "started") in _steps(engine, run)]

        (first,) = _wait_for(going, "one of B and C under way", timeout=120)
        other = c_id if first == b_id else b_id
        name = "run-c" if other == c_id else "run-b"
        refused = asked.count(name)
        _wait_for(lambda: asked.count(name) >= refused + 2, "the other asking twice more", timeout=120)
        assert going() == [first] and _steps(engine, other) == [] and _active_slots(limit) == 1

        request_stop(other, "cancel", engine=engine, actor="sre", reason="one at a time")
        _wait_for(lambda: not flows[other].is_alive(), "the other to end cancelled")
        assert _run(engine, other).state == RunState.cancelled and _steps(engine, other) == []
        assert _active_slots(limit) == 1

        lab.fault(b_host if first == b_id else c_host, "clear")
        _wait_for(lambda: not flows[first].is_alive(), "the first to finish", timeout=120)
    assert _run(engine, a_id).state == RunState.succeeded and _run(engine, first).state == RunState.succeeded
    _wait_for(lambda: _active_slots(limit) == 0, "the limit's slots back to 0")


def test_the_limit_deleted_while_runs_wait_fails_the_waiter_as_a_setup_error_and_spares_the_holder(
    lab: Any,
    fresh_cluster: str,
    second_fresh_cluster: str,
    lab_runtime: Any,
    one_slot: tuple[str, list[str]],
) -> None:
    """`prefect gcl delete` of UPKEEP_CLUSTER_LIMIT while A holds its slot and B waits: B's next ask
    finds no limit and fails before any node, said to be our setting (nothing done, no customer told);
    A, mid-upgrade, finishes and succeeds although the slot it gives back belongs to no limit now."""
    from prefect.client.orchestration import get_client

    engine, (limit, asked) = lab_runtime.engine, one_slot
    a_id, a_host = _held_run(lab, engine, fresh_cluster)
    b_id = _planned(engine, second_fresh_cluster)
    results: dict[str, Any] = {}
    with _cleared(lab, a_host) as started:
        a, b = _b_behind_a(
            engine, asked, started, (fresh_cluster, a_id), (second_fresh_cluster, b_id), results, asks=2
        )

        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(limit)
        _wait_for(lambda: not b.is_alive(), "B to end once the limit is gone", timeout=120)
        ended = _run(engine, b_id)
        assert ended.state == RunState.failed, (ended.state, ended.reason)
        assert (
            "UPKEEP_CLUSTER_LIMIT" in ended.reason and "no Prefect global concurrency limit" in ended.reason
        )
        assert _steps(engine, b_id) == [] and _upgrades(lab, second_fresh_cluster) == [0, 0, 0]
        assert a.is_alive()

        lab.fault(a_host, "clear")
        _wait_for(lambda: not a.is_alive(), "A to finish", timeout=120)
    assert _run(engine, a_id).state == RunState.succeeded, _run(engine, a_id).reason
    assert results["run-a"].is_completed(), results["run-a"]


def test_a_cluster_limit_of_zero_starts_nothing_says_so_once_and_a_run_started_by_hand_fails_before_any_node(
    lab: Any, fresh_cluster: str, second_fresh_cluster: str, lab_runtime: Any
) -> None:
    """UPKEEP_CLUSTER_LIMIT names a Prefect limit set to 0: Prefect answers every ask 422 ("Slots
    requested is greater than the limit"). First (adv21, h-window) each due run was started and failed
    before its first node with one line naming the setting: an SRE alert per run, and each customer's
    announced update dropped, over one setting of the vendor's (adv35 counted 5 alerts for 5 due runs).
    Now the tick reads the limit first and starts nothing: the due run stays planned, untouched, the SRE
    is alerted once (not once per tick), and once the limit is fixed the next tick starts it. A run
    started by hand into such a limit (`upkeep update`) still fails before any node with that line; the
    customer hears nothing. (A disabled limit is not this: Prefect does not enforce it, and runs go.)"""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate

    from flows.dispatch import dispatch
    from flows.product_update import product_update
    from inventory.outbox import Notice

    engine, limit = lab_runtime.engine, f"clusters-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=0))
    lab_runtime.cluster_limit = limit
    run_id = _planned(engine, fresh_cluster)
    said = (
        f"UPKEEP_CLUSTER_LIMIT {limit!r}: the Prefect limit allows 0 clusters at once; set it to at least 1 "
        f"with `prefect gcl update {limit} --limit N`, or unset the setting"
    )

    assert dispatch(max_running=1)["started"] == []
    assert dispatch(max_running=1)["started"] == []  # tick after tick: nothing started, told once

    waiting = _run(engine, run_id)
    assert (waiting.state, waiting.lease_owner) == (RunState.planned, None), (waiting.state, waiting.reason)
    assert _steps(engine, run_id) == [] and _upgrades(lab, fresh_cluster) == [0, 0, 0]
    with session_scope(engine) as session:
        told = session.exec(select(Alert).where(col(Alert.key).startswith(f"cluster-limit:{limit}:"))).all()
        assert [(a.kind, a.run_id) for a in told] == [("held", None)]
        assert said in told[0].body_text, told[0].body_text
    assert _alerts(engine, run_id) == []

    by_hand = product_update(cluster=second_fresh_cluster, to_version=TARGET, return_state=True)

    with session_scope(engine) as session:
        failed = session.exec(
            select(UpgradeRun).where(UpgradeRun.id != run_id).order_by(col(UpgradeRun.id).desc())
        ).first()
        assert failed is not None and failed.id is not None
        failed_id = failed.id
    assert by_hand.is_failed() and _run(engine, failed_id).state == RunState.failed
    assert _run(engine, failed_id).reason.startswith(said), _run(engine, failed_id).reason
    assert _steps(engine, failed_id) == [] and _upgrades(lab, second_fresh_cluster) == [0, 0, 0]
    assert _alerts(engine, failed_id) == ["vendor-side"]
    with session_scope(engine) as session:
        notices = session.exec(select(Notice).where(Notice.update_ref == f"update-{failed_id}")).all()
        assert [n.kind for n in notices if lab_runtime.sre_email not in n.recipients] == []

    with get_client(sync_client=True) as client:  # the SRE fixes the limit
        client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(limit=1))

    assert dispatch(max_running=1)["started"] == [run_id]
    assert _run(engine, run_id).state == RunState.succeeded, _run(engine, run_id).reason
    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
