"""Two designated users acting on one update at once (adversarial review of #17), against the real
database: Bob's request read the update before Ann's Confirm committed, then Bob confirms or defers.
Each step is ordered by the test itself (two sessions, no threads, no sleeps)."""

from __future__ import annotations

import pytest
from sqlmodel import Session, col, select

from flows import portal_actions as actions
from inventory.db import session_scope
from inventory.models import AuditEvent, Customer, UpgradeRun
from inventory.outbox import Notice
from scheduling.errors import SchedulingError
from tests.portal.conftest import NOW, VENDOR, Portal


@pytest.fixture(autouse=True)
def _postgres_only(portal: Portal) -> None:
    if portal.engine.dialect.name == "sqlite":  # one writer at a time: Bob's read would wait for Ann
        pytest.skip("SQLite serialises the two transactions; the race needs PostgreSQL")


def _acme(session: Session) -> Customer:
    return session.exec(select(Customer).where(Customer.name == "acme")).one()


def test_two_users_confirming_at_once_are_both_recorded(portal: Portal) -> None:
    """Ann's Confirm moves the invite SEQUENCE on; Bob's, read before it, used to be refused with the
    operator's text ('another process ... see `upkeep show`') although nothing but a confirmation
    happened meanwhile. Now both are recorded, each with its own notice, one SEQUENCE step each."""
    run_id = portal.updates["acme-c1"]
    with session_scope(portal.engine) as bob:
        bob_run = bob.get(UpgradeRun, run_id)  # Bob's request has read the update ...
        assert bob_run is not None
        before = bob_run.notice_sequence
        with session_scope(portal.engine) as ann:  # ... when Ann's Confirm commits
            actions.confirm(run_id, _acme(ann), now=NOW, actor="ann@acme.example", session=ann, vendor=VENDOR)
        actions.confirm(run_id, _acme(bob), now=NOW, actor="bob@acme.example", session=bob, vendor=VENDOR)
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.notice_sequence == before + 2
        events = session.exec(
            select(AuditEvent).where(AuditEvent.action == "update.confirmed").order_by(col(AuditEvent.id))
        ).all()
        assert [e.actor for e in events] == ["ann@acme.example", "bob@acme.example"]
        assert [e.detail["base"] for e in events] == [before, before]  # both confirmed the same time
        sent = session.exec(select(Notice).where(Notice.kind == "confirmed")).all()
        assert len(sent) == 2


def test_a_confirm_after_someone_moved_the_update_is_refused_in_the_customers_words(portal: Portal) -> None:
    """Ann defers the update after Bob's page showed the old time: Bob's Confirm must not confirm a time
    he never saw; the refusal tells him to look again, not to run an operator's command."""
    run_id = portal.updates["acme-c1"]
    with session_scope(portal.engine) as bob:
        bob_run = bob.get(UpgradeRun, run_id)
        assert bob_run is not None and bob_run.slot_start is not None
        seen = bob_run.slot_start
        with session_scope(portal.engine) as ann:
            run = ann.get(UpgradeRun, run_id)
            assert run is not None
            [later, *_] = actions.defer_choices(run, now=NOW, session=ann)
            actions.defer_to(
                run_id, _acme(ann), later.start, now=NOW, actor="ann@acme.example", session=ann, vendor=VENDOR
            )
        with pytest.raises(SchedulingError) as refused:
            actions.confirm(run_id, _acme(bob), now=NOW, actor="bob@acme.example", session=bob, vendor=VENDOR)
        bob.rollback()
    message = str(refused.value)
    assert "upkeep show" not in message and "another process" not in message, message
    assert "changed" in message and "reload" in message.lower(), message
    with session_scope(portal.engine) as session:
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "update.confirmed")).all() == []
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.slot_start == later.start > seen


def test_a_defer_racing_a_confirm_is_refused_in_the_customers_words(portal: Portal) -> None:
    run_id = portal.updates["acme-c1"]
    with session_scope(portal.engine) as bob:
        bob_run = bob.get(UpgradeRun, run_id)
        assert bob_run is not None
        [later, *_] = actions.defer_choices(bob_run, now=NOW, session=bob)
        with session_scope(portal.engine) as ann:
            actions.confirm(run_id, _acme(ann), now=NOW, actor="ann@acme.example", session=ann, vendor=VENDOR)
        with pytest.raises(SchedulingError) as refused:
            actions.defer_to(
                run_id, _acme(bob), later.start, now=NOW, actor="bob@acme.example", session=bob, vendor=VENDOR
            )
        bob.rollback()
    message = str(refused.value)
    assert "upkeep show" not in message and "reload" in message, message
    with session_scope(portal.engine) as session:
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "update.deferred")).all() == []


def test_an_import_waiting_for_another_withdraws_the_welcome_of_a_user_it_removes(portal: Portal) -> None:
    """Import A adds Cat (her welcome queued) while import B, of a file without her, waits for A's lock.
    B noted the portal users before taking the lock, so Cat was not among them: B removed her and left
    her welcome pending, and the removed user was sent a welcome. Now B notes them under the lock."""
    import copy
    import threading
    import time

    import yaml
    from sqlalchemy import text

    from flows.integrity import import_and_recheck
    from flows.portal_welcome import portal_users, welcome_new_users
    from inventory.importer import apply_inventory, load_inventory
    from inventory.outbox import NoticeState
    from tests.portal.conftest import INVENTORY

    with_cat = copy.deepcopy(INVENTORY)
    with_cat["customers"][0]["portal_users"].append({"email": "cat@acme.example"})
    file_a, file_b = portal.inventory.with_name("a.yaml"), portal.inventory.with_name("b.yaml")
    file_a.write_text(yaml.safe_dump(with_cat, sort_keys=False))
    file_b.write_text(yaml.safe_dump(INVENTORY, sort_keys=False))
    failures: list[BaseException] = []

    def import_b() -> None:
        try:
            import_and_recheck(file_b, engine=portal.engine, actor="b", now=NOW, vendor=VENDOR)
        except BaseException as exc:  # reported by the assert below
            failures.append(exc)

    def b_waits_for_the_lock() -> bool:
        with portal.engine.connect() as probe:
            query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            return bool(probe.execute(text(query)).scalar())

    with Session(portal.engine) as a:
        before = portal_users(a)
        apply_inventory(load_inventory(file_a), session=a, actor="a")  # takes the import lock
        welcome_new_users(before, session=a, now=NOW, vendor=VENDOR, notes=[])
        b = threading.Thread(target=import_b)
        b.start()
        deadline = time.monotonic() + 120
        while not b_waits_for_the_lock():
            assert time.monotonic() < deadline and b.is_alive(), failures
            time.sleep(0.05)
        a.commit()
    b.join(timeout=300)
    assert not b.is_alive() and not failures, failures
    with session_scope(portal.engine) as session:
        [welcome] = session.exec(select(Notice).where(Notice.kind == "welcome")).all()
        assert welcome.recipients == ["cat@acme.example"]
        assert welcome.state == NoticeState.superseded, welcome.state
