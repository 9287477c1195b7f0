"""The whole product-update story on the real lab, through a jump host: a customer's request is
scheduled into their window with an advance notice, the dispatcher runs it when the slot comes, and
the customer gets the completion email. Time is injected; the nodes, SSH, nginx and mail are real."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from flows.dispatch import dispatch
from inventory.db import session_scope
from inventory.installation import installation_id
from inventory.models import RunState, UpgradeRun
from inventory.outbox import Notice
from templates.ics import uid_for
from tests.integration.conftest import _runtime
from upkeep.requests import request_update

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"
ASKED = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def _emails(outbox: Path) -> dict[str, email.message.EmailMessage]:
    found = {}
    for path in outbox.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found[str(message["Subject"])] = message  # type: ignore[assignment]
    return found


def test_request_scheduled_notified_run_and_completed(
    jump_lab: Any, sqlite_engine: Any, prefect_harness: None, tmp_path: Path
):
    from upkeep.settings import load_settings

    settings = load_settings(home=tmp_path / "home", **jump_lab.settings_overrides())
    cluster = jump_lab.status()["nodes"][0]["cluster"]
    hosts = [n["hostname"] for n in jump_lab.status()["nodes"] if n["cluster"] == cluster]
    for runtime in _runtime(jump_lab, settings, sqlite_engine):
        runtime.clock = lambda: ASKED
        run_id = request_update(
            cluster,
            TARGET,
            source="customer",
            case=None,
            urgent=False,
            now_run=False,
            override_reason=None,
            engine=sqlite_engine,
            as_json=True,
        )

        with session_scope(sqlite_engine) as session:
            run = session.get(UpgradeRun, run_id)
            assert run is not None and run.state == RunState.planned and run.slot_start is not None
            slot = run.slot_start
            scheduled = session.exec(select(Notice).where(Notice.kind == "scheduled")).one()
            uid = uid_for(f"update-{run_id}", installation_id(session))
        assert slot >= ASKED + timedelta(hours=72)  # the product-update notice period
        assert "BEGIN:VCALENDAR" in scheduled.ics and f"UID:{uid}" in scheduled.ics

        assert dispatch(max_running=2)["notices_sent"] == 1  # a tick right after: the customer is told

        runtime.clock = lambda slot=slot: slot + timedelta(minutes=1)  # the slot has come
        result = dispatch(max_running=2)

        assert result["started"] == [run_id]
        assert [len(jump_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
        with session_scope(sqlite_engine) as session:
            assert session.get(UpgradeRun, run_id).state == RunState.succeeded  # type: ignore[union-attr]
            kinds = session.exec(
                select(Notice.kind)
                .where(col(Notice.update_ref) == f"update-{run_id}")
                .order_by(col(Notice.id))
            ).all()
        assert list(kinds) == ["scheduled", "started", "completed"]
        mails = _emails(settings.resolved_outbox_dir())
        completed = next(m for subject, m in mails.items() if "complete" in subject.lower())
        assert TARGET in completed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
