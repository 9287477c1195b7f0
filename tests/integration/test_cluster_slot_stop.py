"""`upkeep cancel|pause` of a run waiting for a slot of the fleet cluster limit (UPKEEP_CLUSTER_LIMIT, a
Prefect global concurrency limit). Such a run is claimed and held while it waits, for as long as other
clusters take; before, it ignored the stop until a slot freed, then downloaded and pre-flighted the
update it was told to drop, and only then stopped. Now the stop ends the wait at once, no slot taken,
nothing downloaded, no node contacted; the run that holds the slot goes on untouched.

Flows in-process (threads, as the dispatcher runs them) on the lab and the session's Prefect server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import prefect.concurrency.sync
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from sqlmodel import select

from flows.product_update import product_update
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import Cluster, NodeStep, RunState, UpgradeRun
from tests.integration.conftest import nodes_of
from tests.support.runs import due_now
from upkeep.updates import request_stop

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"
BEFORE_ASK: dict[str, Callable[[], Any]] = {}


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _planned(engine: Any, cluster: str) -> int:
    with session_scope(engine) as session:
        row = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        run_id = due_now(session, row).id
    assert run_id is not None
    return run_id


def _run(engine: Any, run_id: int) -> UpgradeRun:
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def _steps(engine: Any, run_id: int) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        return [
            (s.step, str(s.state)) for s in session.exec(select(NodeStep).where(NodeStep.run_id == run_id))
        ]


def _active_slots(limit: str) -> int:
    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(limit).active_slots)


def _upgrades(lab: Any, cluster: str) -> list[int]:
    return [len(lab.upgrade_log(node["hostname"])) for node in nodes_of(lab, cluster)]


def _flow(
    cluster: str,
    run_id: int,
    name: str,
    started: list[threading.Thread],
    results: dict[str, Any] | None = None,
) -> threading.Thread:
    """`product_update` resuming `run_id` in a thread named `name` (joined by `_cleared`); its final
    state in `results[name]`."""

    def target() -> None:
        state = product_update(cluster=cluster, to_version=TARGET, run_id=run_id, return_state=True)
        if results is not None:
            results[name] = state

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    started.append(thread)
    return thread


def _b_behind_a(
    engine: Any,
    asked: list[str],
    started: list[threading.Thread],
    a: tuple[str, int],
    b: tuple[str, int],
    results: dict[str, Any] | None = None,
    asks: int = 1,
) -> tuple[threading.Thread, threading.Thread]:
    """Run A (cluster, run id; its first upgrade held: `_held_run`) under way and holding the limit's
    one slot, then run B waiting for it, refused `asks` times: their threads."""
    first = _flow(*a, "run-a", started, results)
    _wait_for(lambda: ("upgrade", "started") in _steps(engine, a[1]), "A's first upgrade under way")
    second = _flow(*b, "run-b", started, results)
    _wait_for(lambda: asked.count("run-b") >= asks, f"B asking for a slot {asks} time(s)")
    return first, second


@contextmanager
def _cleared(lab: Any, host: str) -> Iterator[list[threading.Thread]]:
    """The hold on `host` cleared, however the test ends, before the flows it started are joined."""
    started: list[threading.Thread] = []
    try:
        yield started
    finally:
        lab.fault(host, "clear")
        for thread in started:
            thread.join(timeout=120)


@pytest.fixture
def one_slot(lab_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """A fleet limit of one cluster at a time, and the names of the threads that asked it for a slot
    (a thread's name in `BEFORE_ASK`: that is called as the thread asks, before the ask)."""
    limit = f"clusters-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    lab_runtime.cluster_limit = limit
    lab_runtime.slot_poll = 0.2
    lab_runtime.command_timeout = 300.0  # A's held upgrade is released by the test, never timed out
    asked: list[str] = []
    real = prefect.concurrency.sync.concurrency

    def concurrency(*args: Any, **kwargs: Any) -> Any:
        asked.append(threading.current_thread().name)
        if (before := BEFORE_ASK.pop(threading.current_thread().name, None)) is not None:
            before()
        return real(*args, **kwargs)

    monkeypatch.setattr(prefect.concurrency.sync, "concurrency", concurrency)
    yield limit, asked


def _held_run(lab: Any, engine: Any, cluster: str) -> tuple[int, str]:
    """A due run of `cluster` whose first node's upgrade, once under way, is held (the lab's
    `hold-upgrade`) until the test clears it: the run holds the limit's one slot meanwhile."""
    host = nodes_of(lab, cluster)[0]["hostname"]
    lab.fault(host, "hold-upgrade")
    run_id = _planned(engine, cluster)
    return run_id, host


def test_a_cancel_ends_the_wait_for_a_cluster_slot_at_once(
    lab: Any,
    fresh_cluster: str,
    second_fresh_cluster: str,
    lab_runtime: Any,
    one_slot: tuple[str, list[str]],
) -> None:
    engine, (limit, asked) = lab_runtime.engine, one_slot
    a_id, a_host = _held_run(lab, engine, fresh_cluster)
    b_id = _planned(engine, second_fresh_cluster)
    with _cleared(lab, a_host) as started:
        a, b = _b_behind_a(engine, asked, started, (fresh_cluster, a_id), (second_fresh_cluster, b_id))
        assert _active_slots(limit) == 1

        request_stop(b_id, "cancel", engine=engine, actor="sre", reason="customer froze changes")
        _wait_for(lambda: not b.is_alive(), "B to end while A still holds the slot", timeout=60)

        ended = _run(engine, b_id)
        assert ended.state == RunState.cancelled, (ended.state, ended.reason)
        assert ended.reason.startswith("cancelled by ") and ended.reason.endswith(
            ": customer froze changes (after 0 of 3 nodes)"
        ), ended.reason
        assert _steps(engine, b_id) == []  # nothing downloaded, no node pre-flighted
        assert _upgrades(lab, second_fresh_cluster) == [0, 0, 0]
        with session_scope(engine) as session:
            alerts = session.exec(
                select(Alert).where(Alert.run_id == b_id, Alert.kind == "run-cancelled")
            ).all()
            assert len(alerts) == 1 and "customer froze changes" in alerts[0].body_text
        # A was never disturbed: still mid-upgrade, still holding the one slot
        assert a.is_alive() and _run(engine, a_id).state == RunState.running
        assert _active_slots(limit) == 1

        lab.fault(a_host, "clear")
        _wait_for(lambda: not a.is_alive(), "A to finish", timeout=120)
    assert _run(engine, a_id).state == RunState.succeeded
    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    _wait_for(lambda: _active_slots(limit) == 0, "the limit's slots back to 0")
    assert _run(engine, b_id).state == RunState.cancelled
    assert _upgrades(lab, second_fresh_cluster) == [0, 0, 0]


def test_a_pause_ends_the_wait_for_a_cluster_slot_and_a_resume_waits_again(
    lab: Any,
    fresh_cluster: str,
    second_fresh_cluster: str,
    lab_runtime: Any,
    one_slot: tuple[str, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, (limit, asked) = lab_runtime.engine, one_slot
    a_id, a_host = _held_run(lab, engine, fresh_cluster)
    b_id = _planned(engine, second_fresh_cluster)
    with _cleared(lab, a_host) as started:
        a, b = _b_behind_a(engine, asked, started, (fresh_cluster, a_id), (second_fresh_cluster, b_id))
        request_stop(b_id, "pause", engine=engine, actor="sre")
        _wait_for(lambda: not b.is_alive(), "B to end while A still holds the slot", timeout=60)

        paused = _run(engine, b_id)
        assert paused.state == RunState.paused, (paused.state, paused.reason)
        assert paused.reason == "paused by request after 0 of 3 nodes", paused.reason
        assert _steps(engine, b_id) == [] and _upgrades(lab, second_fresh_cluster) == [0, 0, 0]
        assert a.is_alive() and _active_slots(limit) == 1

        # resumed while A still holds the slot: B waits for it again, nothing done meanwhile
        resumed = _flow(second_fresh_cluster, b_id, "run-b-resumed", started)
        _wait_for(lambda: asked.count("run-b-resumed") >= 2, "the resumed B asking twice", timeout=120)
        # a full limit is what waiting means, not an error: Prefect's ERROR line per ask is not shown
        assert not [r for r in caplog.records if "failed to process item" in r.getMessage()]
        assert _run(engine, b_id).state == RunState.running
        assert _steps(engine, b_id) == [] and _active_slots(limit) == 1
        lab.fault(a_host, "clear")
        _wait_for(lambda: not a.is_alive(), "A to finish", timeout=120)
        _wait_for(lambda: not resumed.is_alive(), "the resumed B to finish", timeout=120)
    assert _run(engine, a_id).state == RunState.succeeded
    assert _run(engine, b_id).state == RunState.succeeded
    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    assert _upgrades(lab, second_fresh_cluster) == [1, 1, 1]
    _wait_for(lambda: _active_slots(limit) == 0, "the limit's slots back to 0")


def test_a_cancel_asked_as_the_slot_is_granted_gives_it_back_before_any_download(
    lab: Any, fresh_cluster: str, lab_runtime: Any, one_slot: tuple[str, list[str]]
) -> None:
    """The cancel lands after the run's last look and before its ask, which is granted (the limit is
    free): honoured right after the grant, the slot given back, nothing downloaded. Before, the run
    downloaded and pre-flighted the update, then stopped."""
    engine, (limit, asked) = lab_runtime.engine, one_slot
    run_id = _planned(engine, fresh_cluster)
    BEFORE_ASK["run-c"] = lambda: request_stop(run_id, "cancel", engine=engine, actor="sre", reason="not now")
    started: list[threading.Thread] = []
    run = _flow(fresh_cluster, run_id, "run-c", started)
    run.join(timeout=120)
    assert not run.is_alive() and asked == ["run-c"]

    ended = _run(engine, run_id)
    assert ended.state == RunState.cancelled and ended.reason.endswith(": not now (after 0 of 3 nodes)"), (
        ended.state,
        ended.reason,
    )
    assert _steps(engine, run_id) == [] and _upgrades(lab, fresh_cluster) == [0, 0, 0]
    _wait_for(lambda: _active_slots(limit) == 0, "the limit's slot given back")
