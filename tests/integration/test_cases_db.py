"""Support cases on SQLite and PostgreSQL: numbering, SLA due times, the blocking rule, status changes,
bundles, the auto-close flow (with `now` injected) and the `upkeep case` CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from inventory import cases
from inventory.db import session_scope
from inventory.models import AuditEvent, Cluster, Contact, Customer
from inventory.outbox import Notice
from scheduling.sla import Category, Priority
from scheduling.times import load_zone
from tests.support.races import meanwhile

NY = load_zone("America/New_York")
MONDAY = datetime(2026, 6, 1, 10, tzinfo=NY)


def _fleet(engine: Any) -> None:
    with session_scope(engine) as session:
        acme = Customer(name="acme", timezone="America/New_York")
        globex = Customer(name="globex", timezone="Europe/Berlin")
        session.add_all([acme, globex])
        session.flush()
        session.add(Contact(customer_id=acme.id or 0, email="ops@acme.example", name="Ops"))
        for owner, name in ((acme, "acme-c1"), (acme, "acme-c2"), (globex, "globex-c1")):
            session.add(Cluster(customer_id=owner.id or 0, name=name, version="9.8.0"))


def _open(engine: Any, cluster: str = "acme-c1", priority: str = "P1", **kw: Any) -> str:
    with session_scope(engine) as session:
        found = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        customer = session.get(Customer, found.customer_id)
        assert customer is not None
        case = cases.open_case(
            customer=customer,
            clusters=[found],
            subject=kw.pop("subject", "nodes slow after upgrade"),
            category=kw.pop("category", "Issue"),
            priority=priority,
            now=kw.pop("now", MONDAY),
            opened_by="sre",
            session=session,
            **kw,
        )
        return case.ref


def _cluster_id(engine: Any, name: str) -> int:
    with session_scope(engine) as session:
        return session.exec(select(Cluster.id).where(Cluster.name == name)).one() or 0


def test_open_numbers_routes_and_sets_the_first_response_due(engine: Any) -> None:
    _fleet(engine)
    first, second = _open(engine), _open(engine, priority="Low", category="Feature Request")
    external = _open(engine, priority="sev1", external_id="SUP-4711")
    with session_scope(engine) as session:
        one, two = cases.get_case(first, session=session), cases.get_case(second, session=session)
        sup = cases.get_case(external, session=session)
        assert (first, second) == (f"CASE-{one.id}", f"CASE-{two.id}") and one.id != two.id
        assert (one.priority, one.category, one.queue, one.status) == (
            Priority.P1, Category.ISSUE, "Systems Reliability Engineer", cases.CaseStatus.new
        )  # fmt: skip
        assert one.first_response_due == MONDAY.astimezone(UTC) + timedelta(hours=2)
        assert one.first_response_due.tzinfo is not None
        assert (two.queue, two.priority) == ("Customer Success Representative", Priority.P3)
        assert two.first_response_due == datetime(2026, 6, 2, 10, tzinfo=NY)  # 7 h Mon + 1 h Tue
        assert (sup.priority, sup.first_response_due) == (Priority.P0, MONDAY + timedelta(hours=1))
        assert [c.name for c in cases.case_clusters(one, session=session)] == ["acme-c1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"external_id": "CASE-99"}, "the prefix CASE- is reserved"),
        ({"external_id": "../../etc"}, "is not CASE-<digits>"),
        ({"external_id": "SUP-1"}, "case SUP-1 already exists"),
        ({"priority": "P7"}, "priority 'P7'"),
        ({"category": "question"}, "expected Issue or Feature Request"),
        ({"subject": "   "}, "case subject"),
        ({"cluster": "globex-c1", "other_customer": True}, "must belong to customer acme"),
    ],
)
def test_open_refuses(engine: Any, kwargs: dict[str, Any], message: str) -> None:
    _fleet(engine)
    _open(engine, external_id="SUP-1")
    kwargs = dict(kwargs)  # shared by the SQLite and PostgreSQL runs
    with pytest.raises(ValueError, match=message), session_scope(engine) as session:
        acme = session.exec(select(Customer).where(Customer.name == "acme")).one()
        cluster = session.exec(select(Cluster).where(Cluster.name == kwargs.pop("cluster", "acme-c1"))).one()
        kwargs.pop("other_customer", None)
        args = {"subject": "x", "category": "Issue", "priority": "P2"} | kwargs
        cases.open_case(customer=acme, clusters=[cluster], now=MONDAY, opened_by="t", session=session, **args)


def test_open_p0_p1_cases_block_their_clusters(engine: Any) -> None:
    _fleet(engine)
    c1, c2 = _cluster_id(engine, "acme-c1"), _cluster_id(engine, "acme-c2")
    _open(engine, priority="P2")
    with session_scope(engine) as session:
        assert cases.open_blocking_case(c1, session=session) is None
    older = _open(engine, priority="High", now=MONDAY)
    _open(engine, priority="P0", now=MONDAY + timedelta(hours=1))
    with session_scope(engine) as session:
        blocking = cases.open_blocking_case(c1, session=session)
        assert blocking is not None and blocking.ref == older
        assert cases.open_blocking_case(c2, session=session) is None
        cases.escalate(blocking, by="customer", reason="still down", now=MONDAY, actor="t", session=session)
    with session_scope(engine) as session:
        still = cases.open_blocking_case(c1, session=session)
        assert still is not None and still.ref == older  # escalated is not closed
        for case in cases.list_cases(session=session):
            if case.priority in (Priority.P0, Priority.P1):
                cases.close_case(case, reason="fixed", now=MONDAY, actor="t", session=session)
    with session_scope(engine) as session:
        assert cases.open_blocking_case(c1, session=session) is None


def test_status_contact_escalate_close_and_audit(engine: Any) -> None:
    _fleet(engine)
    ref = _open(engine, priority="P2")
    later = MONDAY + timedelta(days=1)
    with session_scope(engine) as session:
        case = cases.get_case(ref, session=session)
        with pytest.raises(cases.CaseError, match="count only while waiting"):
            cases.record_contact_attempt(case, now=later, actor="t", note="", session=session)
        cases.set_status(case, "waiting on customer", now=later, actor="t", session=session)
        cases.record_contact_attempt(case, now=later, actor="t", note="mail", session=session)
        cases.record_contact_attempt(case, now=later, actor="t", note="phone", session=session)
    with session_scope(engine) as session:
        case = cases.get_case(ref, session=session)
        assert (case.status, case.waiting_since, case.contact_attempts) == (
            cases.CaseStatus.waiting_on_customer, later, 2
        )  # fmt: skip
        for by, reason, message in [
            ("boss", "x", "expected customer or sre"),
            ("sre", " ", "needs a reason"),
        ]:
            with pytest.raises(cases.CaseError, match=message):
                cases.escalate(case, by=by, reason=reason, now=later, actor="t", session=session)
        cases.escalate(case, by="SRE", reason="customer impact grows", now=later, actor="t", session=session)
        assert (case.escalated_by, case.waiting_since) == (cases.EscalatedBy.sre, None)
        cases.close_case(case, reason="done", now=later, actor="t", session=session)
    with session_scope(engine) as session:
        case = cases.get_case(ref, session=session)
        assert (case.status, case.closed_at, case.escalation_reason) == (
            cases.CaseStatus.closed, later, "customer impact grows"
        )  # fmt: skip
        with pytest.raises(cases.CaseError, match="is closed"):
            cases.escalate(case, by="customer", reason="again", now=later, actor="t", session=session)
        actions = session.exec(select(AuditEvent.action).where(AuditEvent.subject == f"case/{ref}")).all()
    assert actions == ["case.opened", "case.status", "case.contact_attempt", "case.contact_attempt",
                       "case.escalated", "case.closed"]  # fmt: skip


def test_bundles_are_kept_with_their_case(engine: Any) -> None:
    _fleet(engine)
    ref = _open(engine)
    c2 = _cluster_id(engine, "acme-c2")
    with session_scope(engine) as session:
        case = cases.get_case(ref, session=session)
        row = cases.DiagnosticsBundle(
            case_id=case.id or 0, cluster_id=c2, url="https://fs/support/acme/x.tar.gz", sha256="a" * 64,
            size=5 << 30, missing_nodes={"n2": "cannot connect"}, redactions={"password": 3},
        )  # fmt: skip
        cases.attach_bundle(case, row, actor="t", session=session)
    with session_scope(engine) as session:
        case = cases.get_case(ref, session=session)
        [bundle] = cases.case_bundles(case, session=session)
        assert (bundle.partial, bundle.size, bundle.missing_nodes, bundle.redactions) == (
            True, 5 << 30, {"n2": "cannot connect"}, {"password": 3}
        )  # fmt: skip
        assert [c.name for c in cases.case_clusters(case, session=session)] == ["acme-c1", "acme-c2"]


@contextmanager
def _configured(engine: Any, tmp_path: Path, **settings: Any) -> Iterator[Any]:
    """A Runtime on `engine` (a home in tmp_path, plus `settings`), the flows' runtime for the block."""
    from flows import runtime
    from upkeep.bootstrap import build_runtime
    from upkeep.settings import load_settings

    built = build_runtime(load_settings(home=tmp_path / "home", **settings), engine=engine)
    runtime.configure(built)
    try:
        yield built
    finally:
        runtime.configure(None)


@pytest.fixture
def flow_runtime(engine: Any, prefect_harness: None, tmp_path: Path) -> Iterator[Any]:
    with _configured(engine, tmp_path) as built:
        yield built


def _escalate(runtime: Any, ref: str, *, by: str, reason: str, now: datetime, actor: str) -> None:
    """`upkeep case escalate REF` as the flow does it, in a transaction of its own."""
    from flows.escalation import escalate_case

    with session_scope(runtime.engine) as session:
        escalate_case(
            runtime, cases.get_case(ref, session=session), by=by, reason=reason, now=now, actor=actor,
            session=session,
        )  # fmt: skip


def test_auto_close_flow_closes_stale_waiting_cases_and_queues_the_email(
    engine: Any, flow_runtime: Any
) -> None:
    from flows.case_auto_close import case_auto_close

    _fleet(engine)
    start = datetime(2026, 6, 1, 12, tzinfo=UTC)
    now = start + timedelta(days=14)
    plans = {"due": ("acme-c1", 2, start), "once": ("acme-c1", 1, start), "fresh": ("acme-c2", 3, now),
             "nobody": ("globex-c1", 2, start - timedelta(days=30))}  # fmt: skip
    refs = {}
    for key, (cluster, attempts, since) in plans.items():
        refs[key] = _open(engine, cluster=cluster, priority="P3", now=since, subject=f"case {key}")
        with session_scope(engine) as session:
            case = cases.get_case(refs[key], session=session)
            cases.set_status(case, "waiting_on_customer", now=since, actor="t", session=session)
            for _ in range(attempts):
                cases.record_contact_attempt(case, now=since, actor="t", note="", session=session)

    with session_scope(engine) as session:  # what `upkeep case auto-close --dry-run` lists, writing nothing
        would = [c.ref for c in cases.auto_close_candidates(now, session=session)]
    assert sorted(would) == sorted([refs["due"], refs["nobody"]])
    assert sorted(case_auto_close(now=now)) == sorted(would)
    assert case_auto_close(now=now + timedelta(hours=1)) == []  # nothing twice

    with session_scope(engine) as session:
        status = {k: cases.get_case(r, session=session).status for k, r in refs.items()}
        notices = session.exec(select(Notice)).all()
        email_due = session.exec(
            select(AuditEvent).where(AuditEvent.action == "case.customer_email_due")
        ).all()
    assert status == {"due": "closed", "once": "waiting_on_customer", "fresh": "waiting_on_customer",
                      "nobody": "closed"}  # fmt: skip
    [notice] = notices
    assert (notice.recipients, notice.kind, notice.update_ref) == (
        ["ops@acme.example"], "case-closed", f"case:{refs['due']}"
    )  # fmt: skip
    assert refs["due"] in notice.subject and "tried to reach you 2 times" in notice.body_text
    assert [e.subject for e in email_due] == [f"case/{refs['nobody']}"]


def test_case_cli_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from upkeep.cli import app

    home = tmp_path / "clihome"
    monkeypatch.setenv("UPKEEP_HOME", str(home))
    monkeypatch.delenv("UPKEEP_DATABASE_URL", raising=False)
    from upkeep.database import open_database
    from upkeep.settings import load_settings

    _fleet(open_database(load_settings()))
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == code, (result.output, result.exception)
        return json.loads(result.stdout) if code == 0 else result

    opened = run("case", "open", "--cluster", "acme-c1", "--subject", "API 500s", "--priority", "Urgent")
    ref = opened["id"]
    assert (opened["customer"], opened["clusters"], opened["priority"], opened["queue"]) == (
        "acme", ["acme-c1"], "P0", "Systems Reliability Engineer"
    )  # fmt: skip
    escalated = run("case", "escalate", ref, "--by", "customer", "--reason", "VP called")
    assert (escalated["status"], escalated["escalated_by"]) == ("escalated", "customer")
    assert [c["id"] for c in run("case", "list")] == [ref]
    assert run("case", "auto-close", "--dry-run") == {"dry_run": True, "would_close": []}
    shown = run("case", "show", ref)
    assert shown["escalation_reason"] == "VP called"
    assert shown["escalation_manager"] == "SRE Manager <sre-manager@localhost>" and shown["next_update_due"]
    assert "needs a reason" in str(run("case", "close", ref, code=1).exception)
    assert run("case", "close", ref, "--reason", "fixed")["status"] == "closed"
    assert run("case", "list") == [] and [c["id"] for c in run("case", "list", "--all")] == [ref]
    refused = run("case", "show", "../../etc", code=1)
    assert isinstance(refused.exception, cases.CaseError)


def test_escalation_assigns_and_notifies_the_manager_who_is_alerted_when_an_update_is_missed(
    engine: Any, tmp_path: Path
) -> None:
    """The handbook's escalation: the SRE Manager holds the case as Escalation Manager, is notified and
    named to the customer; a missed update of the cadence (P1: 4 h) alerts the manager, once, audited."""
    from flows.escalation import check_update_cadence
    from inventory.alerts import Alert

    _fleet(engine)
    ref = _open(engine, priority="P1")
    with _configured(engine, tmp_path, escalation_manager="Maria Manager <maria@vendor.example>") as runtime:
        runtime.clock = lambda: MONDAY
        _escalate(runtime, ref, by="customer", reason="VP called", now=MONDAY, actor="sre")
        with session_scope(engine) as session:
            case = cases.get_case(ref, session=session)
            assert case.escalation_manager == "Maria Manager <maria@vendor.example>"
            assert case.next_update_due == MONDAY.astimezone(UTC) + timedelta(hours=4)
            [notified] = session.exec(select(Alert).where(Alert.kind == "case-escalated")).all()
            [told] = session.exec(select(Notice).where(Notice.kind == "case-escalated")).all()
        assert notified.targets == ["maria@vendor.example"] and ref in notified.body_text
        assert told.recipients == ["ops@acme.example"] and "Maria Manager" in told.body_text

        assert check_update_cadence(runtime, MONDAY + timedelta(hours=3)) == []  # not due yet
        with session_scope(engine) as session:  # an update shared: the next is due 4 h after it
            cases.share_update(
                cases.get_case(ref, session=session),
                note="root cause found",
                now=MONDAY + timedelta(hours=3),
                actor="maria",
                session=session,
            )
        assert check_update_cadence(runtime, MONDAY + timedelta(hours=6)) == []
        late = MONDAY + timedelta(hours=7, minutes=1)  # the update due at +7 h was not shared
        assert check_update_cadence(runtime, late) == [ref]
        assert check_update_cadence(runtime, late + timedelta(minutes=5)) == []  # alerted once
    with session_scope(engine) as session:
        [missed] = session.exec(select(Alert).where(Alert.kind == "case-update-missed")).all()
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "case.update_missed")).all()
        assert cases.get_case(ref, session=session).next_update_due == MONDAY.astimezone(UTC) + timedelta(
            hours=11
        )
    assert missed.targets == ["maria@vendor.example"] and ref in missed.body_text
    assert [a.detail["manager"] for a in audit] == ["Maria Manager <maria@vendor.example>"]


def test_escalating_an_escalated_case_again_is_refused_and_keeps_its_cadence(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adversarial pass on #21: a second `case escalate` (the same or another operator, or both at once
    on PostgreSQL) escalated it again: the customer was told a second time, the manager alerted twice,
    and the update cadence restarted, so an update already overdue was never alerted."""
    from flows import escalation as escalation_module
    from inventory.alerts import Alert
    from inventory.cases import CaseError

    _fleet(engine)
    ref = _open(engine, priority="P1")
    later = MONDAY + timedelta(hours=5)  # the first escalation's update (due +4 h) is overdue
    with _configured(engine, tmp_path) as runtime:
        _escalate(runtime, ref, by="customer", reason="VP called", now=MONDAY, actor="a")
        with pytest.raises(CaseError, match="already escalated"):
            _escalate(runtime, ref, by="sre", reason="again", now=later, actor="b")
        # Two at once: the other operator's escalation commits between this one's read and its write
        # (PostgreSQL; SQLite serialises the two transactions at BEGIN IMMEDIATE).
        if engine.dialect.name == "postgresql":
            ref2 = _open(engine, priority="P1")

            def other_escalates() -> Any:
                with session_scope(engine) as other:
                    return cases.escalate(
                        cases.get_case(ref2, session=other), by="sre", reason="first", now=MONDAY,
                        actor="c", session=other,
                    )  # fmt: skip

            others = meanwhile(monkeypatch, escalation_module, "parse_cadence", other_escalates)
            with pytest.raises(CaseError, match="already escalated"):
                _escalate(runtime, ref2, by="sre", reason="me too", now=MONDAY, actor="d")
            assert others
    with session_scope(engine) as session:
        case = cases.get_case(ref, session=session)
        assert case.next_update_due == MONDAY.astimezone(UTC) + timedelta(hours=4)
        assert case.escalation_reason == "VP called"
        alerts = session.exec(select(Alert).where(Alert.kind == "case-escalated")).all()
        told = session.exec(select(Notice).where(Notice.kind == "case-escalated")).all()
    assert len(alerts) == 1 and len(told) == 1  # ref2's first escalation went through inventory only


def test_a_case_closed_while_the_cadence_check_reads_it_alerts_nobody(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adversarial pass on #21: the dispatcher's cadence check read an escalated case with an overdue
    update; the case was closed (or another dispatcher alerted) before its write: the manager was alerted
    about a closed case (or twice). PostgreSQL: SQLite serialises the two transactions."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers at BEGIN IMMEDIATE: the interleaving cannot happen")
    from flows import escalation as escalation_module
    from flows.escalation import check_update_cadence
    from inventory.alerts import Alert

    _fleet(engine)
    closed_ref, twice_ref = _open(engine, priority="P1"), _open(engine, priority="P1")
    late = MONDAY + timedelta(hours=5)  # the update due at +4 h was not shared
    with _configured(engine, tmp_path) as runtime:
        for ref in (closed_ref, twice_ref):
            _escalate(runtime, ref, by="sre", reason="VP called", now=MONDAY, actor="a")

        def close_then_another_tick() -> Any:
            with session_scope(engine) as other:
                cases.close_case(
                    cases.get_case(closed_ref, session=other),
                    reason="fixed",
                    now=late,
                    actor="b",
                    session=other,
                )
            return check_update_cadence(runtime, late)  # another dispatcher's tick

        others = meanwhile(monkeypatch, escalation_module, "escalated_updates_due", close_then_another_tick,
                           after=True)  # fmt: skip
        assert check_update_cadence(runtime, late) == []
    assert others == [[twice_ref]]
    with session_scope(engine) as session:
        missed = session.exec(select(Alert).where(Alert.kind == "case-update-missed")).all()
    assert len(missed) == 1 and twice_ref in missed[0].subject
