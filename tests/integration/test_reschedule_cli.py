"""The real `upkeep reschedule` CLI (SQLite, real clock): a later slot with --json, and the refusals -
notice too short when moved earlier, a malformed TIME, no --reason, an unknown update - each one line,
exit 1, the database byte for byte unchanged. The rules themselves, on both databases with an injected
clock, are in test_reschedule.py.

acme (America/New_York) has a daily window at 02:00 local, 4 h; product updates need 72 h notice, so
`schedule` lands on the first 02:00 at least 72 h away and two days earlier is less than 72 h from now.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.test_calendar_cli import NEW_YORK, imported, refused
from tests.support.cli import no_traceback, upkeep_here


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    """A home with update-1 scheduled; tests only ever refuse, so it stays as it is."""
    home = imported(tmp_path_factory.mktemp("reschedule"))
    result = upkeep_here(home, "schedule", "acme-c1", "--to", "9.9.0", "--json")
    assert result.returncode == 0, result.stderr
    return home, datetime.fromisoformat(json.loads(result.stdout)["slot_start"])


def local(moment: datetime) -> str:
    return moment.astimezone(NEW_YORK).strftime("%Y-%m-%dT%H:%M")


def test_reschedule_refusals_are_one_line_and_write_nothing(scheduled: tuple[Path, datetime]) -> None:
    home, slot = scheduled
    earlier = slot - timedelta(days=2)
    line = refused(home, "reschedule", "1", "--to", local(earlier), "--reason", "sooner")
    assert line.startswith(
        f"cannot reschedule update-1 to {earlier:%Y-%m-%d %H:%M} UTC: notice: notice too short"
    )
    assert line.endswith(f"the earliest valid slot starts {slot:%Y-%m-%d %H:%M} UTC (its current slot)")
    assert refused(home, "reschedule", "1", "--to", "next tuesday", "--reason", "x") == (
        "--to 'next tuesday' is not an ISO date or date-time (e.g. 2026-12-01 or 2026-12-01T02:00)"
    )
    assert refused(home, "reschedule", "1", "--to", local(slot + timedelta(days=1))) == (
        "reschedule needs --reason TEXT (it is recorded and told to the customer)"
    )
    assert refused(home, "reschedule", "99", "--to", local(slot), "--reason", "x") == "no update 99"


def test_reschedule_later_prints_the_new_slot(tmp_path: Path) -> None:
    home = imported(tmp_path)
    first = upkeep_here(home, "schedule", "acme-c1", "--to", "9.9.0", "--json")
    assert first.returncode == 0, first.stderr
    slot = datetime.fromisoformat(json.loads(first.stdout)["slot_start"])
    later = slot + timedelta(days=1)
    result = upkeep_here(
        home, "reschedule", "update-1", "--to", local(later), "--reason", "vendor hotfix", "--json"
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["id"], data["state"], data["reason"]) == (1, "planned", "vendor hotfix")
    assert datetime.fromisoformat(data["slot_start"]) == later
    assert datetime.fromisoformat(data["previous_slot_start"]) == slot
    assert data["notice"]["kind"] == "rescheduled" and data["notice"]["sequence"] == 2
