"""The product-update flow's branches with fakes at its protocol boundary (tests/support/fakes.py):
a failure at each runbook step, pause, cancel, carry-over to the next window, and a take-over by
another process - a few seconds each (a failed run also opens its case and collects diagnostics,
through the same fakes), without the lab's sshd nodes or nginx.

What is real: the flow under the session's Prefect test harness, the SQLite record, the scheduling
rules. What is fake: the nodes (`FakeFleet`), the file server, mail and the clock. The same branches
run against the real lab in test_product_update.py, test_update_control.py, test_windows.py and
test_takeover.py; these pin the flow's decisions themselves."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows import runtime as flow_runtime
from flows.product_update import product_update
from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import Cluster, RunState, UpgradeRun
from inventory.outbox import Notice
from inventory.repo import get_cluster
from inventory.runs import create_run
from tests.support.fakes import FakeClock, FakeFileServer, FakeFleet, FakeMailTransport, FakeNode

pytestmark = [pytest.mark.prefect]

FROM, TARGET = "9.9.0", "9.10.0"
CLUSTER = "fake-c1"
HOSTS = [f"{CLUSTER}-n{i}" for i in (1, 2, 3)]
PACKAGE = "releases/p-9.10.0.tar.gz"
MONDAY = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)


class World:
    """One customer, one 3-node cluster at 9.9.0, release 9.10.0 on the fake file server."""

    def __init__(self, engine: Engine, tmp_path: Path, *, window: dict[str, str] | None = None) -> None:
        self.engine, self.clock = engine, FakeClock(MONDAY)
        self.fleet, self.files, self.mail = FakeFleet(), FakeFileServer(), FakeMailTransport()
        sha256 = self.files.add(PACKAGE, b"the 9.10.0 package")
        self.nodes = [self.fleet.add(host, FROM) for host in HOSTS]
        cluster = {
            "name": CLUSTER,
            "kind": "software",
            "version": FROM,
            "access": {"type": "direct"},
            "nodes": [
                {"hostname": h, "address": "127.0.0.1", "port": 2201 + n, "user": "upkeep"}
                for n, h in enumerate(HOSTS)
            ],
            "windows": [window or {"days": "mon-sun", "start": "00:00", "duration": "24h"}],
        }
        customer = {
            "name": "fakeco",
            "timezone": "UTC",
            "contacts": [{"email": "ops@fakeco.example", "name": "Fakeco Ops", "role": "primary"}],
            "clusters": [cluster],
        }
        release = {"version": TARGET, "package": PACKAGE, "sha256": sha256, "from": [FROM]}
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(
            yaml.safe_dump({"customers": [customer], "releases": [release]}, sort_keys=False)
        )
        import_inventory(inventory, engine=engine, actor="test")
        self.runtime = Runtime(
            engine=engine,
            fileserver=self.files,
            ssh=self.fleet,
            work_dir=tmp_path / "work",
            mailer=self.mail,
            clock=self.clock,
            health_timeout=0.2,
            health_interval=0.01,
            command_timeout=5.0,
        )

    def update(self, **params: Any) -> Any:
        return product_update(cluster=CLUSTER, to_version=TARGET, return_state=True, **params)

    def run(self) -> UpgradeRun:
        with session_scope(self.engine) as session:
            cluster_id = session.exec(select(Cluster.id).where(Cluster.name == CLUSTER)).one()
            query = select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id)
            return session.exec(query.order_by(col(UpgradeRun.id).desc())).first()  # type: ignore[return-value]

    def notices(self, run_id: int | None) -> list[str]:
        with session_scope(self.engine) as session:
            query = select(Notice.kind).where(col(Notice.update_ref).startswith(f"update-{run_id}"))
            return list(session.exec(query.order_by(col(Notice.id))))

    def upgraded(self) -> list[int]:
        return [len(node.upgrades) for node in self.nodes]


@pytest.fixture
def world(sqlite_engine: Engine, tmp_path: Path, prefect_harness: None) -> Iterator[World]:
    made = World(sqlite_engine, tmp_path)
    flow_runtime.configure(made.runtime)
    try:
        yield made
    finally:
        flow_runtime.configure(None)


def test_every_node_upgraded_once_over_one_connection_each(world: World) -> None:
    state = world.update()

    assert state.is_completed(), state.message
    assert world.run().state == RunState.succeeded
    assert world.upgraded() == [1, 1, 1]
    assert [node.version for node in world.nodes] == [TARGET] * 3
    assert world.fleet.connected == dict.fromkeys(HOSTS, 1)
    assert all(runner.closed for runner in world.fleet.runners)
    assert world.notices(world.run().id) == ["started", "completed"]


def _unreachable_download(w: World) -> None:
    w.files.failing[PACKAGE] = "connection to https://files.example failed: refused"


def _corrupt_package(w: World) -> None:
    w.files.files[PACKAGE] = b"not the package the catalog names"


def _unhealthy(w: World) -> None:
    w.nodes[1].healthy = False


def _wrong_version(w: World) -> None:
    w.nodes[2].version = "9.8.0"


def _unreachable_node(w: World) -> None:
    w.fleet.unreachable.add(HOSTS[0])


def _stage_fails(w: World) -> None:
    w.nodes[2].fail["stage"] = (3, "No space left on device")


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (_unreachable_download, "connection to https://files.example failed"),
        (_corrupt_package, "SHA-256 is"),
        (_unhealthy, f"pre-flight failed, no node touched: {HOSTS[1]}: not healthy"),
        (_wrong_version, f"pre-flight failed, no node touched: {HOSTS[2]}: at 9.8.0, expected 9.9.0"),
        (_unreachable_node, f"pre-flight failed, no node touched: {HOSTS[0]}: cannot connect"),
        (_stage_fails, f"distribute failed, no node upgraded: {HOSTS[2]}: stage failed (exit 3)"),
    ],
    ids=["download", "checksum", "preflight-health", "preflight-version", "preflight-ssh", "distribute"],
)
def test_a_failure_before_any_node_touches_none_and_tells_the_customer_nothing(
    world: World, fault: Any, said: str
) -> None:
    fault(world)

    state = world.update()

    assert state.is_failed()
    run = world.run()
    assert run.state == RunState.failed and run.active_cluster_id is None
    assert said in run.reason
    assert world.upgraded() == [0, 0, 0]
    assert world.notices(run.id) == []  # vendor-side: the customer was never told it started


def _upgrade_fails(node: FakeNode) -> None:
    node.fail["upgrade"] = (1, "upgrade failed: simulated fault")


def _never_healthy(node: FakeNode) -> None:
    node.healthy_after_upgrade = False


def _wrong_version_after(node: FakeNode) -> None:
    node.reports_after_upgrade = "9.9.5"


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (_upgrade_fails, "upgrade to 9.10.0 failed (exit 1): upgrade failed: simulated fault"),
        (_never_healthy, "not healthy after 0.2 s"),
        (_wrong_version_after, "reports 9.9.5 after the upgrade, expected 9.10.0"),
    ],
    ids=["upgrade", "health", "verify"],
)
def test_a_failure_on_the_second_node_stops_the_run_there(world: World, fault: Any, said: str) -> None:
    fault(world.nodes[1])

    state = world.update()

    assert state.is_failed()
    run = world.run()
    assert run.state == RunState.failed
    assert f"{HOSTS[1]}: " in run.reason and said in run.reason
    assert [node.version for node in world.nodes][::2] == [TARGET, FROM]  # node 3 never touched
    assert ["upgrade", TARGET] not in world.nodes[2].commands
    assert world.notices(run.id) == ["started", "failed"]


def _ask(world: World, action: str, reason: str = "") -> None:
    from upkeep.updates import request_stop

    def when_node_1_upgrades(_node: FakeNode) -> None:
        run = world.run()
        assert run.id is not None
        request_stop(run.id, action, engine=world.engine, actor="sre", reason=reason)

    world.nodes[0].before["upgrade"] = when_node_1_upgrades


def test_pause_is_honoured_after_the_node_in_progress_and_resume_finishes_the_rest(world: World) -> None:
    _ask(world, "pause")

    state = world.update()

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.paused and "paused by request after 1 of 3 nodes" in run.reason
    assert world.upgraded() == [1, 0, 0]
    world.nodes[0].before.clear()

    resumed = world.update(run_id=run.id)

    assert resumed.is_completed(), resumed.message
    assert world.run().state == RunState.succeeded
    assert world.upgraded() == [1, 1, 1]  # node 1 not upgraded again


def test_cancel_is_honoured_after_the_node_in_progress_and_the_customer_told(world: World) -> None:
    _ask(world, "cancel", reason="customer asked")

    state = world.update()

    run = world.run()
    assert state.is_completed(), state.message
    assert run.state == RunState.cancelled
    assert run.reason == "cancelled by sre: customer asked (after 1 of 3 nodes)"
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run.id) == ["started", "cancelled"]


@pytest.fixture
def short_window(sqlite_engine: Engine, tmp_path: Path, prefect_harness: None) -> Iterator[World]:
    made = World(sqlite_engine, tmp_path, window={"days": "mon-sun", "start": "00:00", "duration": "1h"})
    flow_runtime.configure(made.runtime)
    try:
        yield made
    finally:
        flow_runtime.configure(None)


def test_a_window_closing_carries_the_rest_over_to_the_next_window(short_window: World) -> None:
    world = short_window
    with session_scope(world.engine) as session:
        run = create_run(
            get_cluster(CLUSTER, session=session),
            to_version=TARGET,
            source="customer",
            requested_by="test",
            session=session,
            state=RunState.planned,
        )
        run.slot_start, run.slot_end = MONDAY, MONDAY + timedelta(minutes=30)
        session.add(run)
        session.flush()
        run_id = run.id
    # 55 minutes pass while node 1 upgrades: 5 are left, a node needs 10.
    world.nodes[0].before["upgrade"] = lambda _node: world.clock.advance(timedelta(minutes=55))

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.planned
    assert run.slot_start == MONDAY + timedelta(days=1)
    assert run.reason.startswith("partially done (1 of 3 nodes)")
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run_id)[-2:] == ["partial", "rescheduled"]


def test_a_run_taken_over_meanwhile_is_left_to_its_new_owner(world: World) -> None:
    def taken_over(_node: FakeNode) -> None:  # another process took the run while node 1 upgraded
        run_id = world.run().id
        with world.engine.begin() as conn:
            conn.execute(
                update(UpgradeRun)
                .where(col(UpgradeRun.id) == run_id)
                .values(lease_owner="elsewhere:1/abc", lease_until=world.clock() + timedelta(minutes=5))
            )

    world.nodes[0].before["upgrade"] = taken_over

    state = world.update()

    assert state.is_completed(), state.message
    assert state.result()["state"] == "taken over"
    run = world.run()
    assert run.state == RunState.running and run.lease_owner == "elsewhere:1/abc"  # not ours to end
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run.id) == ["started"]  # no ending told by the process that lost the run
