"""One-node clusters for dispatcher tests that need no lab: an inventory imported from a spec, and a
Runtime over it with no remote parts (file server, SSH: None) and the clock the test gives."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import select

from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import Cluster, RunState
from inventory.runs import create_run
from tasks.mail import OutboxDirTransport

ALL_WEEK = {"days": "mon-sun", "start": "00:00", "duration": "24h"}
HOUR = timedelta(hours=1)


def one_node_fleet(
    engine: Any,
    tmp_path: Path,
    customers: dict[str, int],
    *,
    clock: Callable[[], datetime],
    window: dict[str, str] = ALL_WEEK,
    name: str = "{customer}-c{i:02d}",
) -> Runtime:
    """Each customer (UTC, one contact) with that many one-node clusters named by `name`, at 9.8.0 with
    9.9.0 released from it, all in `window`."""
    spec = {
        "customers": [
            {
                "name": customer,
                "timezone": "UTC",
                "contacts": [{"email": f"ops@{customer}.example"}],
                "clusters": [
                    {
                        "name": name.format(customer=customer, i=i),
                        "kind": "software",
                        "version": "9.8.0",
                        "access": {"type": "direct"},
                        "nodes": [{"hostname": f"{name.format(customer=customer, i=i)}-n1"}],
                        "windows": [window],
                    }
                    for i in range(count)
                ],
            }
            for customer, count in customers.items()
        ],
        "releases": [{"version": "9.9.0", "package": "r/9.9.0.tgz", "sha256": "ab" * 32, "from": ["9.8.0"]}],
    }
    source = tmp_path / "fleet.yaml"
    source.write_text(yaml.safe_dump(spec, sort_keys=False))
    import_inventory(source, engine=engine, actor="test")
    return Runtime(
        engine=engine,
        fileserver=None,  # type: ignore[arg-type]
        ssh=None,  # type: ignore[arg-type]
        work_dir=tmp_path,
        mailer=OutboxDirTransport(tmp_path / "outbox"),
        clock=clock,
    )


def planned_run(engine: Any, cluster: str, slot: datetime, told: datetime, length: timedelta = HOUR) -> int:
    """A planned update of `cluster` to 9.9.0 in [slot, slot + length), announced at `told`; its id."""
    with session_scope(engine) as session:
        row = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        run = create_run(
            row,
            to_version="9.9.0",
            source="schedule",
            requested_by="t",
            session=session,
            state=RunState.planned,
        )
        run.slot_start, run.slot_end, run.notice_sequence, run.told_at = slot, slot + length, 1, told
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id
