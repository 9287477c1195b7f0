"""A case row is printed as it is stored, even where it breaks a limit that Upkeep's own writes keep
(subject 1-200 characters, opened_by 128, escalation reason 2,000): a row written by hand in SQL, by
another Upkeep version, or on SQLite (which does not enforce VARCHAR lengths). `case show|list` and
their --json read it; the read model (`CasePublic`, which shares `CaseBase` and its write limits with the
table) must not refuse what is already in the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from inventory.case_tables import Case, DiagnosticsBundle
from inventory.db import make_engine, migrate, session_scope
from inventory.models import Cluster, Customer
from tests.faults.cli import CliHome, cli_home, invoke

pytestmark = [pytest.mark.faults]

SUBJECT = "S" * 250 + "\u00e9"
URL = "http://127.0.0.1:8080/support/" + "u" * 1100 + ".tar.gz"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[CliHome]:
    with cli_home(tmp_path, None) as home:
        engine = make_engine(f"sqlite:///{home.db}")
        migrate(engine)
        now = datetime(2026, 12, 5, tzinfo=UTC)
        with session_scope(engine) as session:
            customer = Customer(name="acme", timezone="Europe/Berlin")
            session.add(customer)
            session.flush()
            cluster = Cluster(customer_id=customer.id or 0, name="acme-c1", version="9.8.0")
            session.add(cluster)
            session.flush()
            due = now + timedelta(hours=4)
            case = Case(
                ref="CASE-1", customer_id=customer.id or 0, subject=SUBJECT, category="issue", queue="q",
                priority="P2", opened_by="o" * 200, opened_at=now, first_response_due=due,
                escalation_reason="e" * 2500,
            )  # fmt: skip
            session.add(case)
            session.flush()
            session.add(
                DiagnosticsBundle(
                    case_id=case.id or 0,
                    cluster_id=cluster.id or 0,
                    url=URL,
                    sha256="0" * 64,
                    size=1,
                    created_at=now,
                )
            )
        engine.dispose()
        yield home


@pytest.mark.parametrize("as_json", [False, True])
def test_case_show_and_list_print_a_row_past_the_write_limits_as_stored(home: CliHome, as_json: bool) -> None:
    flag = ["--json"] if as_json else []
    shown = invoke("case", "show", "CASE-1", *flag)
    assert "Traceback" not in shown.text and shown.code == 0, shown.text[-3000:]
    listing = invoke("case", "list", *flag)
    assert "Traceback" not in listing.text and listing.code == 0, listing.text[-3000:]
    if as_json:
        case = json.loads(shown.stdout)
        assert case["subject"] == SUBJECT and case["opened_by"] == "o" * 200
        assert case["escalation_reason"] == "e" * 2500 and case["bundles"][0]["url"] == URL
        [listed] = json.loads(listing.stdout)
        assert listed == case
    else:
        assert SUBJECT[:40] in shown.stdout
