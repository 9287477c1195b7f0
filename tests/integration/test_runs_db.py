"""Run records on SQLite and PostgreSQL: the database itself allows one active update per cluster."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from inventory.db import session_scope
from inventory.models import Cluster, Customer, RunState, UpgradeRun
from inventory.runs import ActiveRunExists, create_run, finish_run


def _cluster(engine: Any) -> Cluster:
    with session_scope(engine) as session:
        customer = Customer(name="acme", timezone="America/New_York")
        session.add(customer)
        session.flush()
        cluster = Cluster(customer_id=customer.id or 0, name="acme-c1", version="9.8.0")
        session.add(cluster)
        session.flush()
        return cluster


def test_second_active_run_for_a_cluster_is_refused(engine: Any):
    cluster = _cluster(engine)
    with session_scope(engine) as session:
        first = create_run(cluster, to_version="9.10.0", source="cli", requested_by="a", session=session)
    refused = rf"acme-c1 already has an active update \(run {first.id}"
    with pytest.raises(ActiveRunExists, match=refused), session_scope(engine) as session:
        create_run(cluster, to_version="9.10.0", source="cli", requested_by="b", session=session)
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, first.id)
        assert run is not None
        finish_run(run, RunState.succeeded, session=session)
    with session_scope(engine) as session:
        create_run(cluster, to_version="9.11.0", source="cli", requested_by="c", session=session)
        runs = session.exec(select(UpgradeRun)).all()
    assert len(runs) == 2


def test_timestamps_come_back_aware_utc(engine: Any):
    cluster = _cluster(engine)
    with session_scope(engine) as session:
        run = create_run(cluster, to_version="9.10.0", source="cli", requested_by="a", session=session)
    with session_scope(engine) as session:
        loaded = session.get(UpgradeRun, run.id)
        assert loaded is not None and loaded.created_at.utcoffset() is not None
        assert loaded.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
