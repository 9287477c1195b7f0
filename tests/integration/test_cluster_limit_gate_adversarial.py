"""Adversarial pass (adv38) on the dispatcher's cluster-limit gate (flows/dispatch.py
`cluster_limit_blocks`): the tick reads the Prefect limit UPKEEP_CLUSTER_LIMIT names and, when it can
grant no slot, starts nothing and tells the SRE once a day. Here: names Prefect accepts that the read
mangles, a name long enough to overflow the alert's key, and two dispatchers telling it at once.

The gate alone, on the session's real Prefect server and a real database of each kind (the fake world
of tests/support/update_world.py for the inventory); no lab needed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows.dispatch import cluster_limit_blocks
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import RunState
from tests.integration.test_cluster_slot_stop import one_slot
from tests.support.update_world import World

pytestmark = [pytest.mark.prefect]
NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
LOG = logging.getLogger("adv38")
__all__ = ["one_slot"]  # the fixture, used here by name


@pytest.fixture
def world(engine: Engine, tmp_path: Path, prefect_harness: None) -> World:
    return World(engine, tmp_path)


def _limit(name: str, size: int) -> str:
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
    return name


def _told(engine: Engine) -> list[Alert]:
    with session_scope(engine) as session:
        return list(session.exec(select(Alert).where(col(Alert.key).startswith("cluster-limit:"))))


@pytest.mark.parametrize("mark", ["#", "?"], ids=["hash", "question-mark"])
def test_a_usable_limit_whose_name_has_a_url_character_does_not_hold_the_fleet(
    world: World, mark: str
) -> None:
    """Prefect bans only / % & > < in a limit's name: 'upkeep#clusters' is a limit a run takes slots
    of (the name travels in the JSON body of its ask). The gate must not call it missing."""
    world.runtime.cluster_limit = _limit(f"upkeep{mark}clusters-{uuid4().hex[:8]}", 2)

    assert not cluster_limit_blocks(world.runtime, NOW, LOG)
    assert _told(world.engine) == []


def test_a_missing_limit_with_a_long_name_is_told_not_a_crash_of_every_tick(world: World) -> None:
    """The alert's key (`cluster-limit:NAME:DAY`, at most 128 characters in the table) grew with the
    name: past ~100 characters PostgreSQL refused the insert and every tick failed with a traceback,
    nobody told. The key stays bounded (and unique per name and day); the alert names the limit."""
    name = f"upkeep-fleet-cluster-limit-{uuid4().hex}-" + "x" * 80
    world.runtime.cluster_limit = name

    assert cluster_limit_blocks(world.runtime, NOW, LOG)
    assert cluster_limit_blocks(world.runtime, NOW, LOG)

    [alert] = _told(world.engine)
    assert len(alert.key) <= 128 and alert.key.endswith(":2026-11-24")
    assert name in alert.body_text


@pytest.fixture
def other_dispatcher_tells_first(world: World, missing_limit: str) -> Iterator[str]:
    """Another dispatcher's tick queues the same day's alert after this one looked for it and before
    this one's insert (the two ticks of a schedule land in the same second): hooked at that insert."""
    from inventory.alerts import queue_alert

    if world.engine.dialect.name == "sqlite":
        pytest.skip("SQLite takes the write lock at BEGIN: the two inserts cannot interleave")
    key = f"cluster-limit:{missing_limit}:2026-11-24"
    fired: list[bool] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if fired or not statement.lstrip().upper().startswith("INSERT INTO ALERT "):
            return
        fired.append(True)
        with session_scope(world.engine) as other:
            queue_alert(
                key=key, kind="held", subject="s", body_text="b", body_html="b", session=other, now=NOW
            )

    event.listen(world.engine, "before_cursor_execute", before)
    try:
        yield key
    finally:
        event.remove(world.engine, "before_cursor_execute", before)
    assert fired, "the hook never ran: the race was not played"


@pytest.fixture
def missing_limit(world: World) -> str:
    world.runtime.cluster_limit = f"missing-{uuid4().hex[:8]}"
    return world.runtime.cluster_limit


@pytest.mark.postgres
def test_two_dispatchers_telling_a_held_fleet_at_once_both_hold_and_one_alert_is_queued(
    world: World, other_dispatcher_tells_first: str
) -> None:
    """Both ticks hold; the loser of the race on the alert's unique key found the row the winner wrote.
    Before, its insert raised IntegrityError out of the gate: that tick failed with a traceback before
    its pages, escalations, SRE alerts and customer notices (SQLite serialises the two writers with
    BEGIN IMMEDIATE: PostgreSQL only)."""
    assert cluster_limit_blocks(world.runtime, NOW, LOG)

    with session_scope(world.engine) as session:
        keys = session.execute(text("SELECT key FROM alert WHERE key LIKE 'cluster-limit:%'")).scalars().all()
    assert keys == [other_dispatcher_tells_first]


ONCALL = {
    "timezone": "UTC",
    "handover": "09:00",
    "rotation": "weekly",
    "starts": "2026-11-30",
    "engineers": [{"name": "Ana", "email": "ana@vendor.example"}],
    "team_lead": {"name": "Tess", "email": "tess@vendor.example"},
    "escalation": [{"name": "Max", "email": "max@vendor.example", "role": "support manager"}],
}


def test_an_urgent_update_held_by_the_cluster_limit_pages_the_on_call(
    engine: Engine, tmp_path: Path, prefect_harness: None
) -> None:
    """Before the gate, an urgent update due into a missing limit failed before its first node and
    paged the engineer on call and the team lead at any hour (README: a failed urgent update pages).
    Held instead, it was one plain SRE alert a day, perhaps already sent that morning for another run:
    the case's fix sat unstarted at night with nobody woken. Held urgent runs page, once a run a day."""
    from inventory.alerts import Page

    world = World(engine, tmp_path, oncall=ONCALL)
    world.runtime.cluster_limit = f"missing-{uuid4().hex[:8]}"
    now = world.clock()
    run_id = _run_at(world, now, RunState.planned, urgent=True, case_ref="SUP-4711")

    assert cluster_limit_blocks(world.runtime, now, LOG)
    assert cluster_limit_blocks(world.runtime, now, LOG)

    with session_scope(engine) as session:
        [paged] = session.exec(select(Page)).all()
    assert paged.reason.startswith(f"URGENT update {run_id} held"), paged.reason
    assert world.runtime.cluster_limit in paged.reason and paged.paged == ["Ana", "Tess"]


def _run_at(world: World, slot: datetime, state: RunState, **values: Any) -> int:
    """A run of the fake world's cluster, announced, its slot at `slot`; `values` set on it."""
    from inventory.models import Cluster
    from inventory.runs import create_run
    from tests.support.update_world import CLUSTER, TARGET

    with session_scope(world.engine) as session:
        cluster = session.exec(select(Cluster).where(Cluster.name == CLUSTER)).one()
        run = create_run(
            cluster, to_version=TARGET, source="support", requested_by="t", session=session, state=state
        )
        run.notice_sequence, run.told_at = 1, slot - timedelta(days=1)
        run.slot_start, run.slot_end = slot, slot + timedelta(hours=4)
        for name, value in values.items():
            setattr(run, name, value)
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


def test_an_orphan_the_held_tick_does_not_take_over_is_told_by_its_run(world: World) -> None:
    """A run whose dispatcher died mid-update (lease ran out) is not taken over while the limit grants
    no slot: its cluster may stand half-upgraded past its window. Before the gate the take-over failed
    it (customer and SRE told, with its nodes); held, it stayed `running` and the one daily alert did
    not say which run or cluster was stranded. Each such orphan is told to the SRE with its run, once
    a day while held."""
    world.runtime.cluster_limit = f"missing-{uuid4().hex[:8]}"
    now = world.clock()
    lease = {"lease_owner": "gone:1/abcdef", "lease_since": now - timedelta(hours=1)}
    orphan = _run_at(world, now - timedelta(hours=1), RunState.running, **lease, lease_until=now)

    assert cluster_limit_blocks(world.runtime, now, LOG)
    assert cluster_limit_blocks(world.runtime, now, LOG)

    with session_scope(world.engine) as session:
        told = session.exec(select(Alert).where(Alert.run_id == orphan)).all()
    assert [a.kind for a in told] == ["held"], told
    assert world.runtime.cluster_limit in told[0].body_text and "not taken over" in told[0].subject


def test_a_limit_broken_again_the_same_day_after_a_fix_is_told_again(world: World) -> None:
    """Deleted (held, told), made again (runs go), deleted again the same afternoon: the once-a-day key
    kept the second episode silent until midnight UTC, the night's due updates held and moved to their
    next windows (each customer told) with no SRE word. Once a day while it holds; a new hold, a new
    alert."""
    name = world.runtime.cluster_limit = f"flapping-{uuid4().hex[:8]}"
    now = world.clock()
    assert cluster_limit_blocks(world.runtime, now, LOG)
    _limit(name, 2)
    assert not cluster_limit_blocks(world.runtime, now + timedelta(hours=1), LOG)
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)

    assert cluster_limit_blocks(world.runtime, now + timedelta(hours=5), LOG)
    assert cluster_limit_blocks(world.runtime, now + timedelta(hours=6), LOG)

    assert len(_told(world.engine)) == 2


@pytest.mark.lab
def test_the_limit_deleted_during_an_in_process_tick_holds_the_claims_still_to_come(
    lab: Any,
    fresh_cluster: str,
    second_fresh_cluster: str,
    lab_runtime: Any,
    one_slot: tuple[str, list[str]],
) -> None:
    """`upkeep dispatch` keeps its workers claiming until nothing is due, all in one tick (hours on a
    big night); the gate was read once, at its start. The limit deleted while A upgrades: B, claimed
    after A, was started and failed before its first node, its customer's update dropped, the very
    thing the gate is for. Now every later claim of the tick reads the limit first: B stays planned."""
    from flows.dispatch import dispatch
    from tests.integration.test_cluster_slot_stop import (
        _cleared,
        _held_run,
        _planned,
        _run,
        _steps,
        _wait_for,
    )

    engine, (limit, _) = lab_runtime.engine, one_slot
    a_id, a_host = _held_run(lab, engine, fresh_cluster)
    b_id = _planned(engine, second_fresh_cluster)
    results: dict[str, Any] = {}
    with _cleared(lab, a_host) as started:
        tick = threading.Thread(target=lambda: results.update(dispatch(max_running=1)), name="tick")
        started.append(tick)
        tick.start()
        _wait_for(lambda: ("upgrade", "started") in _steps(engine, a_id), "A's first upgrade under way")
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(limit)
        lab.fault(a_host, "clear")
        tick.join(timeout=300)
    assert not tick.is_alive() and results["started"] == [a_id], results

    assert _run(engine, a_id).state == RunState.succeeded
    held = _run(engine, b_id)
    assert held.state == RunState.planned, (held.state, held.reason)
    assert _steps(engine, b_id) == []
    with session_scope(engine) as session:
        assert session.exec(select(Alert).where(Alert.run_id == b_id)).all() == []


def test_a_proxys_404_for_the_limit_holds_the_tick_and_tells_the_sre(world: World, tmp_path: Path) -> None:
    """A 404 that is not Prefect's (a proxy or path router in front of /api/v2/concurrency_limits): no run
    gets a slot through that route, so the tick holds the fleet with one alert naming the answer, as for
    a missing limit, in the proxy's words (decided on adv62's question; 'erred' started every due run
    into the same 404)."""
    from http.server import ThreadingHTTPServer

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.integration.test_doctor_limit_answers import _Api

    handler = type("Api", (_Api,), {})
    handler.answer = staticmethod(lambda: (404, b"<html>404 Not Found</html>", {"Content-Type": "text/html"}))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    world.runtime.cluster_limit = "clusters"
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{server.server_address[1]}/api"}):
            held = cluster_limit_blocks(world.runtime, NOW, LOG)
    finally:
        server.shutdown()
        server.server_close()

    assert held, "the tick starts every due run into the proxy's 404"
    [alert] = _told(world.engine)
    assert "404" in alert.body_text, alert.body_text
