"""Run rows whose kind, source or requested action this version does not know: written by a newer
(or older) Upkeep sharing the database, or by hand in SQL. The columns are plain VARCHARs
(inventory.types.EnumText), so such a row can exist; reading it must not crash `upkeep runs`, `show`
or their --json with a traceback, and the value is shown as it is stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from inventory.db import make_engine, migrate, session_scope
from inventory.models import Cluster, Customer, UpgradeRun
from tests.faults.cli import CliHome, cli_home, invoke

pytestmark = [pytest.mark.faults]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[CliHome, int]]:
    with cli_home(tmp_path, None) as home:
        engine = make_engine(f"sqlite:///{home.db}")
        migrate(engine)
        with session_scope(engine) as session:
            customer = Customer(name="acme", timezone="Europe/Berlin")
            session.add(customer)
            session.flush()
            cluster = Cluster(customer_id=customer.id or 0, name="acme-c1", version="9.8.0")
            session.add(cluster)
            session.flush()
            slot = datetime.now(UTC) + timedelta(days=2)
            run = UpgradeRun(
                cluster_id=cluster.id or 0,
                from_version="9.8.0",
                to_version="9.10.0",
                slot_start=slot,
                slot_end=slot + timedelta(hours=2),
            )
            session.add(run)
            session.flush()
            run_id = run.id or 0
        with engine.begin() as conn:  # what a newer Upkeep, or an operator in psql, leaves behind
            conn.execute(
                text(
                    "UPDATE upgraderun SET kind = 'firmware', source = 'partner',"
                    " requested_action = 'drain' WHERE id = :id"
                ),
                {"id": run_id},
            )
        engine.dispose()
        yield home, run_id


@pytest.mark.parametrize("as_json", [False, True])
def test_runs_and_show_read_a_row_with_values_this_version_does_not_know(
    home: tuple[CliHome, int], as_json: bool
) -> None:
    _home, run_id = home
    flag = ["--json"] if as_json else []
    listing = invoke("runs", *flag)
    assert "Traceback" not in listing.text and listing.code == 0, listing.text[-3000:]
    shown = invoke("show", str(run_id), *flag)
    assert "Traceback" not in shown.text and shown.code == 0, shown.text[-3000:]
    if as_json:
        [row] = json.loads(listing.stdout)
        assert row["source"] == "partner"
        assert json.loads(shown.stdout)["source"] == "partner"
    else:
        assert "partner" in listing.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_the_calendar_lists_a_planned_run_of_a_kind_this_version_does_not_know(
    home: tuple[CliHome, int], as_json: bool
) -> None:
    _home, run_id = home
    shown = invoke("calendar", *(["--json"] if as_json else []))
    assert "Traceback" not in shown.text and shown.code == 0, shown.text[-3000:]
    assert f"update-{run_id}" in shown.stdout
