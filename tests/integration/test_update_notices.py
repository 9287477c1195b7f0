"""What people are told about an update, and the window cutoff: real lab, real flow, the outbox read back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

import flows.product_update
from flows.alerts import deliver_alerts
from flows.product_update import product_update
from flows.steps import download
from inventory.alerts import Alert
from inventory.cases import Case
from inventory.db import session_scope
from inventory.models import Cluster, RunState, UpgradeRun
from inventory.outbox import Notice
from inventory.runs import create_run
from inventory.windows import MaintenanceWindow
from tasks.alerts import AppriseChannel
from tasks.fileserver import HttpFileServer
from tests.integration.conftest import nodes_of
from tests.integration.webhook import WebhookReceiver

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"


def _notices(engine: Any, run_id: int) -> list[Notice]:
    with session_scope(engine) as session:
        return list(
            session.exec(
                select(Notice)
                .where(col(Notice.update_ref).startswith(f"update-{run_id}"))
                .order_by(col(Notice.id))
            ).all()
        )


def _alerts(engine: Any, run_id: int) -> list[Alert]:
    with session_scope(engine) as session:
        return list(session.exec(select(Alert).where(Alert.run_id == run_id).order_by(col(Alert.id))).all())


def _run(engine: Any, cluster: str) -> UpgradeRun:
    with session_scope(engine) as session:
        cluster_id = session.exec(select(Cluster.id).where(Cluster.name == cluster)).one()
        return session.exec(
            select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id).order_by(col(UpgradeRun.id).desc())
        ).first()  # type: ignore[return-value]


def test_customer_is_told_when_it_starts_and_completes(lab: Any, fresh_cluster: str, lab_runtime: Any):
    state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)
    assert state.is_completed(), state.message

    run = _run(lab_runtime.engine, fresh_cluster)
    notices = _notices(lab_runtime.engine, run.id or 0)
    assert [n.kind for n in notices] == ["started", "completed"]
    assert all(n.recipients and "@" in n.recipients[0] for n in notices)
    assert (
        fresh_cluster in notices[1].body_text
        and "9.8.0" in notices[1].body_text
        and TARGET in notices[1].body_text
    )


def test_failure_tells_the_customer_plainly_and_the_sre_with_case_and_bundle(
    lab: Any, fresh_cluster: str, lab_runtime: Any
):
    host = nodes_of(lab, fresh_cluster)[1]["hostname"]
    lab.fault(host, "fail-upgrade")
    try:
        state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)
    finally:
        lab.fault(host, "clear")
    assert state.is_failed()

    run = _run(lab_runtime.engine, fresh_cluster)
    notices = _notices(lab_runtime.engine, run.id or 0)
    assert [n.kind for n in notices] == ["started", "failed"]
    assert "simulated fault" not in notices[1].body_text  # no internals for the customer
    (sre,) = _alerts(lab_runtime.engine, run.id or 0)
    assert sre.kind == "run-failed" and "Hello" not in sre.body_text  # the SRE's own template
    assert host in sre.subject and "simulated fault" in sre.body_text and "step upgrade" in sre.body_text
    assert run.case_ref is None  # the update resolved no case; the failure's case is its own
    assert re.search(r"Case: +CASE-\d+", sre.body_text)  # a case was opened for the failure and named
    assert "https://127.0.0.1" in sre.body_text  # with the diagnostics bundle's URL
    assert f"upkeep show {run.id}" in sre.body_text
    assert re.search(rf"Prefect flow run: +http://\S+/runs/flow-run/{run.flow_run_id}", sre.body_text)


def test_a_file_server_failure_before_any_node_alerts_only_the_sre_naming_the_url(
    lab: Any, fresh_cluster: str, lab_runtime: Any, lab_settings: Any, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(flows.product_update, "download", download.with_options(retry_delay_seconds=0))
    lab_runtime.fileserver = HttpFileServer(
        url=lab_settings.fileserver_url,
        user=lab_settings.fileserver_user,
        password="not-the-password",
        ca=lab_settings.fileserver_ca,
    )
    receiver = WebhookReceiver()
    receiver.start()
    lab_runtime.alert_channels = (*lab_runtime.alert_channels, AppriseChannel(receiver.url))
    try:
        state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)
        assert state.is_failed()
        deliver_alerts(lab_runtime)
    finally:
        receiver.stop()

    run = _run(lab_runtime.engine, fresh_cluster)
    assert run.state == RunState.failed and "no node touched" in run.reason
    assert _notices(lab_runtime.engine, run.id or 0) == []  # the customer hears nothing
    with session_scope(lab_runtime.engine) as session:
        assert session.exec(select(Case)).all() == []  # and no case is opened for them
    (posted,) = receiver.received
    package_url = f"{lab_settings.fileserver_url}/releases/upkeep-product-{TARGET}.tar.gz"
    assert package_url in posted["message"] and "HTTP 401" in posted["message"]
    assert "fileserver_password" in posted["message"] and "not-the-password" not in posted["message"]
    assert "before any node" in posted["title"]
    assert [len(lab.upgrade_log(n["hostname"])) for n in nodes_of(lab, fresh_cluster)] == [0, 0, 0]


def test_a_distribute_failure_after_node_1_got_the_package_tells_the_customer_nothing(
    lab: Any, fresh_cluster: str, lab_runtime: Any
):
    """Node 1 staged the package, node 2's copy arrived corrupted: no node was upgraded, nothing
    changed on the customer's nodes. They were told 'started', then 'failed', and a P1 case was
    opened over a vendor-side package problem."""
    host = nodes_of(lab, fresh_cluster)[1]["hostname"]
    lab.fault(host, "corrupt-package")
    try:
        state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)
    finally:
        lab.fault(host, "clear")

    assert state.is_failed()
    run = _run(lab_runtime.engine, fresh_cluster)
    assert run.state == RunState.failed and "no node touched" in run.reason and host in run.reason
    assert _notices(lab_runtime.engine, run.id or 0) == []  # neither "started" nor "failed"
    with session_scope(lab_runtime.engine) as session:
        assert session.exec(select(Case)).all() == []
    (alert,) = [a for a in _alerts(lab_runtime.engine, run.id or 0) if a.kind == "vendor-side"]
    assert "distribute" in alert.body_text and "checksum mismatch" in alert.body_text
    assert [len(lab.upgrade_log(n["hostname"])) for n in nodes_of(lab, fresh_cluster)] == [0, 0, 0]


def test_window_cutoff_upgrades_what_fits_and_carries_the_rest(
    lab: Any, fresh_cluster: str, lab_runtime: Any
):
    hosts = [node["hostname"] for node in nodes_of(lab, fresh_cluster)]
    base = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    # Time passes as the nodes themselves log upgrades: ten minutes each.
    lab_runtime.clock = lambda: base + timedelta(minutes=10) * sum(len(lab.upgrade_log(h)) for h in hosts)
    lab_runtime.per_node_estimate = timedelta(minutes=10)
    with session_scope(lab_runtime.engine) as session:
        cluster = session.exec(select(Cluster).where(Cluster.name == fresh_cluster)).one()
        for window in session.exec(
            select(MaintenanceWindow).where(MaintenanceWindow.cluster_id == cluster.id)
        ):
            session.delete(window)  # only this test's windows: Tue and Wed 03:00-03:25 UTC
        session.add(
            MaintenanceWindow(
                cluster_id=cluster.id or 0,
                days=["tue", "wed"],
                start="03:00",
                duration_minutes=25,
                timezone="UTC",
            )
        )
        run = create_run(
            cluster,
            to_version=TARGET,
            source="support",
            requested_by="t",
            session=session,
            state=RunState.planned,
        )
        run.slot_start, run.slot_end, run.notice_sequence = base, base + timedelta(minutes=25), 1
        session.add(run)
        session.flush()
        run_id = run.id or 0

    state = product_update(cluster=fresh_cluster, to_version=TARGET, run_id=run_id, return_state=True)

    assert state.is_completed(), state.message
    assert [len(lab.upgrade_log(h)) for h in hosts] == [1, 1, 0]  # 3 × 10 min do not fit in 25
    carried = _run(lab_runtime.engine, fresh_cluster)
    assert carried.state == RunState.planned and carried.active_cluster_id is not None
    assert carried.slot_start == datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # Wednesday's window
    assert "partially done (2 of 3 nodes)" in carried.reason
    kinds = {(n.kind, n.sequence) for n in _notices(lab_runtime.engine, run_id)}
    assert {("partial", 1), ("rescheduled", 2)} <= kinds

    lab_runtime.clock = lambda: datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # the next window opens
    state = product_update(cluster=fresh_cluster, to_version=TARGET, run_id=run_id, return_state=True)

    assert state.is_completed(), state.message
    assert [len(lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
    assert _run(lab_runtime.engine, fresh_cluster).state == RunState.succeeded
