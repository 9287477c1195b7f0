"""A user name longer than 128 characters (a directory's `DOMAIN\\first.last-contractor-...`, a service
account named after its team and purpose): `upkeep request|schedule|update` record it as the run's
`requested_by`, `upkeep oncall ack` as the page's `acked_by`. On PostgreSQL both were VARCHAR(128): the
command died on a raw DataError (SQLite never enforces the length). Migration 0013 lifts the limit, as
0012 did for approved_by and auditevent.actor; below 0013 a downgrade refuses while a longer one exists.
On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from inventory.db import HEAD_REVISION
from inventory.revision import current_revisions
from tests.integration.test_calendar_cli import INVENTORY
from tests.integration.test_migrate_db import _alembic
from tests.integration.test_takeover import _database_url
from tests.support.cli import home_env, no_traceback, upkeep_in_process

LONG = ("CORP\\ada.lovelace-change-advisory-board-" * 5)[:200]


def _cli(engine: Engine, home: Path, *args: str) -> tuple[int, str, str]:
    env = home_env(home, UPKEEP_DATABASE_URL=_database_url(engine), USER=LONG, LOGNAME=LONG)
    done = upkeep_in_process(*args, env=env, cwd=home.parent)
    no_traceback(done)
    return done.returncode, done.stdout, done.stderr


def test_a_request_by_a_user_with_a_long_name_is_recorded_whole(engine: Engine, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    code, out, err = _cli(engine, home, "inventory", "import", str(fleet))
    assert code == 0, err

    code, out, err = _cli(engine, home, "request", "acme-c1", "--to", "9.9.0", "--source", "customer")

    assert code == 0, out + err
    with engine.connect() as connection:
        assert connection.execute(text("SELECT requested_by FROM upgraderun")).scalar_one() == LONG


def test_a_page_acknowledged_by_a_user_with_a_long_name_is_recorded_whole(engine: Engine) -> None:
    from inventory.alerts import Page
    from inventory.db import session_scope

    with session_scope(engine) as session:
        session.add(Page(key="case:CASE-1", reason="disk full", acked_by=LONG))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT acked_by FROM page")).scalar_one() == LONG


def test_a_downgrade_below_0013_keeps_a_name_longer_than_the_old_limit_or_is_refused(
    engine: Engine,
) -> None:
    """As below 0012 (tests/integration/test_migrate_db.py): on PostgreSQL refused, nothing changed; on
    SQLite, which never enforced the limit, the name is kept as it is."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO page (key, reason, inform_vp, level, paged, acked_by, created_at) VALUES "
                "('k', 'r', false, 0, '[]', :who, '2026-12-06 06:00:00+00:00')"
            ),
            {"who": LONG},
        )
    if engine.dialect.name == "postgresql":
        with pytest.raises(RuntimeError, match=r"page\.acked_by are longer than 128"):
            _alembic(engine, "downgrade", "0012")
        assert current_revisions(engine) == {HEAD_REVISION}
    else:
        _alembic(engine, "downgrade", "0012")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT acked_by FROM page")).scalar_one() == LONG


def test_an_update_scheduled_under_a_long_support_contact_setting_is_recorded_whole(
    engine: Engine, tmp_path: Path
) -> None:
    """UPKEEP_SUPPORT_CONTACT is free text shown in every notice, copied onto each run as it is scheduled
    (upgraderun.support_contact, VARCHAR(254)): a desk's phone numbers, hours and address overflowed it,
    and scheduling died on PostgreSQL with a raw DataError. 0013 lifts that limit too."""
    contact = (
        "Acme Support Desk, +1 800 555 0100 (24x7), +49 89 1234 5678 (EU hours), support@acme.example; " * 3
    )
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    env = home_env(home, UPKEEP_DATABASE_URL=_database_url(engine), UPKEEP_SUPPORT_CONTACT=contact)
    assert upkeep_in_process("inventory", "import", str(fleet), env=env, cwd=tmp_path).returncode == 0

    done = upkeep_in_process(
        "request", "acme-c1", "--to", "9.9.0", "--source", "customer", env=env, cwd=tmp_path
    )

    no_traceback(done)
    assert done.returncode == 0, done.stdout + done.stderr
    with engine.connect() as connection:
        assert connection.execute(text("SELECT support_contact FROM upgraderun")).scalar_one() == contact


def test_the_audit_trail_names_a_long_requester_whole_as_the_run_does(engine: Engine, tmp_path: Path) -> None:
    """adv43: 0012 made auditevent.actor unbounded, but `record_audit` still cut the actor to 128
    characters: the run said LONG asked for it, its `update.scheduled` audit event named someone else (a
    prefix that may be another account's whole name). The audit trail must name who acted, whole."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    code, out, err = _cli(engine, home, "inventory", "import", str(fleet))
    assert code == 0, err

    code, out, err = _cli(engine, home, "request", "acme-c1", "--to", "9.9.0", "--source", "customer")

    assert code == 0, out + err
    with engine.connect() as connection:
        actors = connection.execute(
            text("SELECT actor FROM auditevent WHERE action = 'update.scheduled'")
        ).scalars()
        assert list(actors) == [LONG]


def test_a_downgrade_across_0013_and_0012_refused_by_0012_leaves_0013s_columns_unbounded(
    engine: Engine,
) -> None:
    """adv46: a downgrade below 0012 passes 0013's check (no long requester) and widens nothing back
    until 0012 refuses (a long audit actor): one transaction, so 0013's narrowing is undone with it, the
    revision stays at the head and the refusal is one line."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite never narrows a column (0012, 0013 do nothing there)")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO auditevent (actor, action, subject, detail, at) VALUES "
                "(:who, 'a', 's', '{}', '2026-12-06 06:00:00+00:00')"
            ),
            {"who": LONG},
        )
    with pytest.raises(RuntimeError, match=r"below 0012: 1 row\(s\) of auditevent\.actor") as refused:
        _alembic(engine, "downgrade", "0011")
    assert "\n" not in str(refused.value)
    assert current_revisions(engine) == {HEAD_REVISION}
    with engine.connect() as connection:
        lengths = connection.execute(
            text(
                "SELECT table_name || '.' || column_name, character_maximum_length "
                "FROM information_schema.columns WHERE (table_name, column_name) IN "
                "(('upgraderun', 'requested_by'), ('page', 'acked_by'), "
                "('upgraderun', 'support_contact'))"
            )
        ).all()
    assert dict(lengths) == {
        "upgraderun.requested_by": None,
        "page.acked_by": None,
        "upgraderun.support_contact": None,
    }


def test_a_long_name_committed_while_0013_is_downgraded_is_refused_not_a_raw_data_error(
    engine: Engine,
) -> None:
    """adv43 noticed, adv46 shows: 0013's downgrade counted the long values, then altered the columns. A
    long name whose transaction was open at the count (not seen) and committed before the ALTER took its
    lock made the ALTER fail on a raw StringDataRightTruncation instead of the refusal. The columns are
    locked before the count. Synchronised on PostgreSQL's own view of the downgrade waiting for a lock
    (pg_stat_activity), not on time: the guard only bounds a hang."""
    import threading
    import time

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite never narrows a column")
    writer = engine.connect()
    writer.execute(
        text(
            "INSERT INTO page (key, reason, inform_vp, level, paged, acked_by, created_at) VALUES "
            "('k', 'r', false, 0, '[]', :who, '2026-12-06 06:00:00+00:00')"
        ),
        {"who": LONG},
    )  # open: holds its row and its table's ROW EXCLUSIVE lock
    outcome: list[BaseException | None] = []

    def downgrade() -> None:
        try:
            _alembic(engine, "downgrade", "0012")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=downgrade, daemon=True)
    worker.start()
    guard = time.monotonic() + 60
    with engine.connect() as watcher:
        while not outcome and time.monotonic() < guard:
            waiting = watcher.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one()
            watcher.rollback()
            if waiting:
                break
            worker.join(0.05)  # not busy-spinning on PostgreSQL; no assert depends on it
    writer.commit()
    writer.close()
    worker.join(60)

    assert outcome, "the downgrade never finished"
    assert isinstance(outcome[0], RuntimeError), repr(outcome[0])
    assert "page.acked_by are longer than 128" in str(outcome[0]), outcome[0]
    assert current_revisions(engine) == {HEAD_REVISION}
