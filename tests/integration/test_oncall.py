"""On-call paging with an injected clock, on SQLite and PostgreSQL: a page reaches the engineer on call
and the team lead, escalates one level per period while unacknowledged, stops when acknowledged, and
every step is audited. The rotation comes from a real inventory file's `oncall:` section."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows.oncall import OnCallError, ack, escalate_due, page, who
from flows.runtime import Runtime
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.importer import InventoryError, import_inventory
from inventory.models import AuditEvent
from tasks.fileserver import HttpFileServer
from tasks.mail import OutboxDirTransport
from tasks.ssh import SshSettings

T0 = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)  # a Friday, 04:00 in Berlin: the middle of the night

INVENTORY = """\
customers:
  - name: acme
    timezone: America/New_York
    clusters:
      - name: acme-c1
        kind: software
        version: 9.8.0
        access: {type: direct}
        nodes: [{hostname: n1, address: 127.0.0.1, port: 2201}]
oncall:
  timezone: Europe/Berlin
  handover: "09:00"
  rotation: weekly
  starts: 2026-11-30
  engineers:
    - {name: Ana, email: ana@vendor.example}
    - {name: Ben, email: ben@vendor.example, notify: "json://127.0.0.1:9/ben"}
  team_lead: {name: Tess, email: tess@vendor.example}
  escalation:
    - {name: Max, email: max@vendor.example, role: support manager}
    - {name: Dora, email: dora@vendor.example, role: senior director}
  informed:
    - {name: Vic, email: vic@vendor.example, role: VP customer success}
"""


@pytest.fixture
def runtime(engine: Engine, tmp_path: Path) -> Runtime:
    path = tmp_path / "fleet.yaml"
    path.write_text(INVENTORY)
    import_inventory(path, engine=engine, actor="test")
    clock = {"now": T0}
    runtime = Runtime(
        engine=engine,
        fileserver=HttpFileServer(url="https://127.0.0.1:9", user="u", password="p"),
        ssh=SshSettings(known_hosts=tmp_path / "kh", key_path=tmp_path / "key"),
        work_dir=tmp_path,
        mailer=OutboxDirTransport(tmp_path / "outbox"),
        oncall_escalate_after=timedelta(minutes=15),
        clock=lambda: clock["now"],
    )
    runtime.clock_state = clock  # type: ignore[attr-defined]
    return runtime


def _at(runtime: Any, when: datetime) -> None:
    runtime.clock_state["now"] = when


def _pages(engine: Engine) -> list[Alert]:
    with session_scope(engine) as session:
        return list(
            session.exec(select(Alert).where(col(Alert.kind).startswith("page")).order_by(col(Alert.id)))
        )


def _audit(engine: Engine) -> list[tuple[str, dict[str, Any]]]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(AuditEvent)
            .where(col(AuditEvent.action).startswith("oncall."))
            .order_by(col(AuditEvent.id))
        )
        return [(e.action, e.detail) for e in rows]


def test_a_p0_page_escalates_one_level_at_a_time_until_acknowledged(engine: Engine, runtime: Any):
    page_id = page(
        runtime, key="case:CASE-9", headline="P0 case CASE-9 opened", cause="acme-c1 is down", p0=True
    )
    assert page_id is not None
    first, informed = _pages(engine)
    assert first.targets == ["ana@vendor.example", "tess@vendor.example"]  # Ana's week; the lead too
    assert f"upkeep oncall ack {page_id}" in first.body_text and first.subject.startswith("[Upkeep] PAGE: ")
    assert informed.targets == ["vic@vendor.example"] and "FYI (P0)" in informed.subject  # the VP
    assert page(runtime, key="case:CASE-9", headline="again", cause="again") == page_id  # paged once

    _at(runtime, T0 + timedelta(minutes=14))
    assert escalate_due(runtime, runtime.clock()) == []  # not yet
    _at(runtime, T0 + timedelta(minutes=15))
    assert escalate_due(runtime, runtime.clock()) == [page_id]
    assert _pages(engine)[-1].targets == ["max@vendor.example"]  # support manager, alone
    assert escalate_due(runtime, runtime.clock()) == []  # one level per period

    _at(runtime, T0 + timedelta(minutes=31))
    ack(runtime, page_id, actor="max")
    _at(runtime, T0 + timedelta(hours=2))
    assert escalate_due(runtime, runtime.clock()) == []  # the senior director is never paged
    assert [a.targets for a in _pages(engine)][-1] == ["max@vendor.example"]
    with pytest.raises(OnCallError, match=f"page {page_id} was already acknowledged by max"):
        ack(runtime, page_id, actor="ana")

    assert [(action, detail.get("level")) for action, detail in _audit(engine)] == [
        ("oncall.paged", 0),
        ("oncall.escalated", 1),
        ("oncall.acked", 1),
    ]


def test_the_chain_ends_with_the_senior_director(engine: Engine, runtime: Any):
    _at(runtime, datetime(2026, 12, 7, 9, 30, tzinfo=UTC))  # Monday after the 09:00 Berlin hand-over
    page_id = page(runtime, key="run:7", headline="urgent update failed", cause="node n1: upgrade failed")
    assert _pages(engine)[0].targets == [
        "ben@vendor.example",
        "json://127.0.0.1:9/ben",
        "tess@vendor.example",
    ]
    for minutes in (15, 30, 45, 60):
        _at(runtime, datetime(2026, 12, 7, 9, 30, tzinfo=UTC) + timedelta(minutes=minutes))
        escalate_due(runtime, runtime.clock())
    assert [a.targets for a in _pages(engine)] == [
        ["ben@vendor.example", "json://127.0.0.1:9/ben", "tess@vendor.example"],
        ["max@vendor.example"],
        ["dora@vendor.example"],
    ]
    assert [d["level"] for action, d in _audit(engine) if action == "oncall.escalated"] == [1, 2]
    assert page_id is not None


def test_who_is_on_call_follows_the_berlin_hand_over(engine: Engine, runtime: Any):
    before = who(runtime, datetime(2026, 12, 7, 7, 59, tzinfo=UTC))  # 08:59 CET Monday
    after = who(runtime, datetime(2026, 12, 7, 8, 0, tzinfo=UTC))  # 09:00 CET
    assert before is not None and after is not None
    assert (before.engineer.name, after.engineer.name) == ("Ana", "Ben")
    assert after.as_dict()["shift"] == {
        "start": "2026-12-07T08:00:00+00:00",
        "end": "2026-12-14T08:00:00+00:00",
    }


def test_a_bad_oncall_section_is_one_line_per_problem_with_its_line(tmp_path: Path, engine: Engine):
    path = tmp_path / "bad.yaml"
    path.write_text(
        INVENTORY.replace('handover: "09:00"', 'handover: "9am"').replace(
            "rotation: weekly", "rotation: hourly"
        )
    )
    with pytest.raises(InventoryError) as caught:
        import_inventory(path, engine=engine, actor="test")
    text = str(caught.value)
    assert f"{path}:12:" in text and "'9am' is not a local time HH:MM" in text
    assert f"{path}:13:" in text and "'hourly' is not one of daily, weekly" in text


def test_a_p0_case_however_opened_pages_at_the_next_tick(engine: Engine, runtime: Any):
    from flows.oncall import page_triggers
    from inventory import cases, repo

    with session_scope(engine) as session:
        cluster = repo.get_cluster("acme-c1", session=session)
        case = cases.open_case(
            customer=repo.customer_of(cluster, session=session), clusters=[cluster], subject="cluster down",
            category="Issue", priority="P0", now=T0, opened_by="support", session=session,
        )  # fmt: skip
        ref = case.ref
    (page_id,) = page_triggers(runtime, T0)
    assert page_triggers(runtime, T0) == []  # once
    first, informed = _pages(engine)
    assert f"P0 case {ref} opened" in first.subject and "acme/acme-c1" in first.subject
    assert informed.targets == ["vic@vendor.example"]
    assert page_id is not None


def test_oncall_show_and_ack_on_the_command_line(tmp_path: Path):
    import json
    import os
    import subprocess

    from tests.support.cli import upkeep_in_process

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env["UPKEEP_HOME"] = str(tmp_path / "home")
    (tmp_path / "fleet.yaml").write_text(INVENTORY)

    def upkeep(*args: str) -> subprocess.CompletedProcess[str]:
        return upkeep_in_process(*args, env=env)  # the CLI's answers only (tests/support/cli.py)

    assert upkeep("inventory", "import", str(tmp_path / "fleet.yaml")).returncode == 0
    shown = upkeep("oncall", "show", "--at", "2026-12-07T09:00:00+01:00", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert (data["on_call"]["name"], data["team_lead"]["name"]) == ("Ben", "Tess")
    assert [p["role"] for p in data["escalation"]] == ["support manager", "senior director"]

    from inventory.db import make_engine

    db = make_engine(f"sqlite:///{tmp_path / 'home' / 'upkeep.db'}")
    try:
        runtime = Runtime(
            engine=db, fileserver=HttpFileServer(url="https://127.0.0.1:9", user="u", password="p"),
            ssh=SshSettings(known_hosts=tmp_path / "kh", key_path=tmp_path / "key"), work_dir=tmp_path,
            mailer=OutboxDirTransport(tmp_path / "outbox"),
        )  # fmt: skip
        page_id = page(runtime, key="run:1", headline="urgent update failed", cause="n1: upgrade failed")
        acked = upkeep("oncall", "ack", str(page_id))
        assert acked.returncode == 0 and f"page {page_id} acknowledged" in acked.stdout, acked.stderr
        again = upkeep("oncall", "ack", str(page_id))
        assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
        assert "already acknowledged" in again.stderr and "Traceback" not in again.stderr
        assert [action for action, _ in _audit(db)] == ["oncall.paged", "oncall.acked"]
    finally:
        db.dispose()


def test_an_ack_landing_while_the_tick_escalates_stops_it_and_nobody_more_is_paged(
    engine: Engine, runtime: Any, monkeypatch: pytest.MonkeyPatch
):
    """`upkeep oncall ack` commits between the tick reading the page as unacknowledged and the tick
    writing the next level: the support manager was paged after the engineer had acknowledged."""
    import flows.oncall as oncall

    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite serializes the two: the tick's transaction begins IMMEDIATE")
    page_id = page(runtime, key="run:7", headline="urgent update failed", cause="node n1: upgrade failed")
    assert page_id is not None
    real = oncall.paged_at_level

    def ack_first(chain: Any, level: int, at: datetime) -> Any:
        if level >= 1:
            ack(runtime, page_id, actor="ana")  # another process, its own transaction
        return real(chain, level, at)

    monkeypatch.setattr(oncall, "paged_at_level", ack_first)
    _at(runtime, T0 + timedelta(minutes=15))
    assert escalate_due(runtime, runtime.clock()) == []
    assert not any("ESCALATED" in a.subject for a in _pages(engine))
    assert [action for action, _ in _audit(engine)] == ["oncall.paged", "oncall.acked"]


def test_a_page_is_escalated_once_by_two_ticks_at_once(
    engine: Engine, runtime: Any, monkeypatch: pytest.MonkeyPatch
):
    """Two dispatcher ticks escalate the same page: one level step, one message, and the other tick
    does not die on the alert's unique key."""
    import flows.oncall as oncall

    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite serializes the two: the tick's transaction begins IMMEDIATE")
    page_id = page(runtime, key="run:8", headline="urgent update failed", cause="node n1: upgrade failed")
    real = oncall.paged_at_level
    nested: list[list[int]] = []

    def other_tick_first(chain: Any, level: int, at: datetime) -> Any:
        if level >= 1 and not nested:
            nested.append([])
            nested[0] += escalate_due(runtime, at)  # the other tick, its own transaction
        return real(chain, level, at)

    monkeypatch.setattr(oncall, "paged_at_level", other_tick_first)
    _at(runtime, T0 + timedelta(minutes=15))
    mine = escalate_due(runtime, runtime.clock())
    assert sorted([*mine, *nested[0]]) == [page_id]
    assert sum("ESCALATED" in a.subject for a in _pages(engine)) == 1
    assert [action for action, _ in _audit(engine)] == ["oncall.paged", "oncall.escalated"]


def test_a_p0_case_closed_before_its_escalation_pages_nobody_more(engine: Engine, runtime: Any):
    from flows.oncall import page_triggers
    from inventory import cases, repo

    with session_scope(engine) as session:
        cluster = repo.get_cluster("acme-c1", session=session)
        case = cases.open_case(
            customer=repo.customer_of(cluster, session=session), clusters=[cluster], subject="cluster down",
            category="Issue", priority="P0", now=T0, opened_by="support", session=session,
        )  # fmt: skip
        ref = case.ref
    (page_id,) = page_triggers(runtime, T0)
    with session_scope(engine) as session:
        cases.close_case(
            cases.get_case(ref, session=session), reason="fixed", now=T0 + timedelta(minutes=5),
            actor="support", session=session,
        )  # fmt: skip
    _at(runtime, T0 + timedelta(minutes=15))
    assert escalate_due(runtime, runtime.clock()) == []  # the support manager is not woken for it
    assert not any("ESCALATED" in a.subject for a in _pages(engine))
    assert [action for action, _ in _audit(engine)][-1] == "oncall.resolved"
    assert page_id is not None


def test_an_escalated_page_still_names_its_run_case_and_cluster(engine: Engine, runtime: Any):
    """Level 1 (the support manager, woken at night) got only the headline: no customer/cluster, no
    case, no run to inspect."""
    page_id = page(
        runtime, key="case:CASE-4", headline="P0 case CASE-4 opened", cause="acme-c1 is down",
        case_ref="CASE-4", cluster="acme-c1", customer="acme",
    )  # fmt: skip
    _at(runtime, T0 + timedelta(minutes=15))
    assert escalate_due(runtime, runtime.clock()) == [page_id]
    escalated = _pages(engine)[-1]
    assert escalated.subject == "[Upkeep] acme/acme-c1: ESCALATED (level 1): P0 case CASE-4 opened"
    assert (
        "Case:              CASE-4" in escalated.body_text and "Cause: acme-c1 is down" in escalated.body_text
    )
