"""One customer's 3-node cluster behind the fakes of tests/support/fakes.py, for the product-update flow's
branch tests (tests/unit/test_update_branches.py, under tests/support/flow_engine.py) and the
dispatcher's (tests/integration/test_dispatch_unknown_kind.py, under the real Prefect harness)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows.product_update import product_update
from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import Cluster, Node, NodeStep, RunState, StepState, UpgradeRun
from inventory.outbox import Notice
from tests.support.fakes import FakeClock, FakeFileServer, FakeFleet, FakeMailTransport, FakeNode

FROM, TARGET = "9.9.0", "9.10.0"
CLUSTER = "fake-c1"
HOSTS = [f"{CLUSTER}-n{i}" for i in (1, 2, 3)]
PACKAGE = "releases/p-9.10.0.tar.gz"
MONDAY = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)


class Killed(BaseException):
    """The flow's process dies (kill -9, its machine lost)."""


class World:
    """One customer, one 3-node cluster at 9.9.0, release 9.10.0 on the fake file server; `oncall`, the
    inventory's on-call section when given."""

    def __init__(
        self,
        engine: Engine,
        tmp_path: Path,
        *,
        window: dict[str, str] | None = None,
        oncall: dict[str, Any] | None = None,
    ) -> None:
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
        document: dict[str, Any] = {"customers": [customer], "releases": [release]}
        if oncall is not None:
            document["oncall"] = oncall
        inventory.write_text(yaml.safe_dump(document, sort_keys=False))
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

    def request(self, *, now_run: bool, as_json: bool = True) -> int:
        """`upkeep request CLUSTER --to TARGET [--now]` for the customer, as the CLI calls it."""
        from upkeep.requests import request_update

        return request_update(
            CLUSTER,
            TARGET,
            source="customer",
            case=None,
            urgent=False,
            now_run=now_run,
            override_reason=None,
            engine=self.engine,
            as_json=as_json,
        )

    def ask_at_node_1(self, action: str, reason: str = "") -> None:
        """`upkeep pause|cancel` (`action`) while node 1 upgrades: honoured before node 2."""
        from upkeep.updates import request_stop

        def when_node_1_upgrades(_node: FakeNode) -> None:
            run = self.run()
            assert run.id is not None
            request_stop(run.id, action, engine=self.engine, actor="sre", reason=reason)

        self.nodes[0].before["upgrade"] = when_node_1_upgrades

    def paused_after_node_1(self, **params: Any) -> UpgradeRun:
        """The update paused by `upkeep pause` while node 1 upgraded: node 1 done, the run 'paused', the
        pause no longer asked. `params`: the flow's (a planned run's `run_id`)."""
        self.ask_at_node_1("pause")
        assert self.update(**params).is_completed()
        run = self.run()
        assert run.id is not None and run.state == RunState.paused and self.upgraded() == [1, 0, 0]
        self.nodes[0].before.clear()
        return run

    def left_mid_upgrade_of_node_2(self, **params: Any) -> UpgradeRun:
        """A run paused after node 1, then as a kill -9 in the middle of node 2's upgrade leaves it: that
        upgrade's step open (the node itself is the test's to set: finishing on its own, or not).
        `params`: the flow's (a planned run's `run_id`)."""
        run = self.paused_after_node_1(**params)
        assert run.id is not None
        with session_scope(self.engine) as session:  # what the killed process left: node 2's upgrade open
            node_2 = session.exec(select(Node.id).where(Node.hostname == HOSTS[1])).one()
            session.add(
                NodeStep(
                    run_id=run.id, node_id=node_2, step="upgrade", state=StepState.started, detail=TARGET
                )
            )
        return run

    def killed_before_recording_success(
        self, monkeypatch: pytest.MonkeyPatch, *, as_it_dies: Callable[[], None] | None = None, **params: Any
    ) -> UpgradeRun:
        """The update as a process that dies right after node 3's verification, before recording the
        success, leaves it: every node upgraded, the run still 'running'. `as_it_dies` runs just before
        the death (the clock moved on, say); `params`: the flow's (a planned run's `run_id`)."""
        from flows import product_update as update_flow

        real_finish = update_flow.finish

        def killed_before_recording(*args: Any, **kwargs: Any) -> None:
            if args[3] is RunState.succeeded:
                if as_it_dies is not None:
                    as_it_dies()
                raise Killed
            real_finish(*args, **kwargs)

        monkeypatch.setattr(update_flow, "finish", killed_before_recording)
        with pytest.raises(Killed):
            self.update(**params)
        monkeypatch.setattr(update_flow, "finish", real_finish)
        run = self.run()
        assert run.id is not None and run.state == RunState.running and self.upgraded() == [1, 1, 1]
        return run
