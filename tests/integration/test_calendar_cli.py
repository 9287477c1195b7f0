"""The real `upkeep` CLI for scheduling: `calendar` (DST changes flagged), `schedule`, `defer`,
`cancel-update`, `notices send`, and how each refuses bad input: one line naming the value, exit 1,
the database byte for byte unchanged.

`calendar` takes a hidden `--now` so a preview (and this test) can look at a DST change whatever the date
today; the other commands use the real clock, so their assertions are relative to the slot they get.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.support.cli import database, no_traceback, upkeep_here

SHA = "ef" * 32
INVENTORY = f"""\
customers:
  - name: acme
    timezone: America/New_York
    contacts: [{{email: ops@acme.example}}]
    clusters:
      - name: acme-c1
        kind: software
        version: 9.8.0
        access: {{type: direct}}
        nodes: [{{hostname: acme-c1-n1}}, {{hostname: acme-c1-n2}}]
        windows:
          - {{days: mon-sun, start: "02:00", duration: 4h}}
  - name: globex
    timezone: Europe/Berlin
    contacts: [{{email: ops@globex.example}}]
    clusters:
      - name: globex-c1
        kind: cloud
        version: 9.8.0
        access: {{type: direct}}
        nodes: [{{hostname: globex-c1-n1}}]
        windows:
          - {{days: sat, start: "22:00", duration: 6h}}
releases:
  - {{version: 9.9.0, package: releases/p-9.9.0.tgz, sha256: {SHA}, from: [9.8.0]}}
"""
NY_DST = "DST: clocks go back 1 h (EDT→EST)"
NEW_YORK = ZoneInfo("America/New_York")


def imported(root: Path) -> Path:
    source = root / "fleet.yaml"
    source.write_text(INVENTORY)
    home = root / "home"
    result = upkeep_here(home, "inventory", "import", str(source))
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only for the tests that use it."""
    return imported(tmp_path_factory.mktemp("calendar"))


def refused(home: Path, *args: str) -> str:
    """Run a command that must be refused; returns its one error line. Nothing may be written."""
    before = database(home)
    result = upkeep_here(home, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    no_traceback(result)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert database(home) == before
    return line.removeprefix("error: ")


def test_calendar_flags_the_dst_change_per_customer(home: Path) -> None:
    result = upkeep_here(home, "calendar", "--weeks", "8", "--json", "--now", "2026-10-15T12:00:00Z")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    dst = [(r["customer"], r["at"], r["local"], r["detail"]) for r in rows if r["what"] == "dst"]
    assert dst == [
        (
            "globex",
            "2026-10-25T01:00:00+00:00",
            "Sun 2026-10-25 02:00 CET",
            "DST: clocks go back 1 h (CEST→CET)",
        ),
        ("acme", "2026-11-01T06:00:00+00:00", "Sun 2026-11-01 01:00 EST", NY_DST),
    ]
    # acme's window stays at 02:00 local; in UTC it moves an hour later across the change
    windows = {r["at"][:10]: (r["utc"], r["local"]) for r in rows if r["cluster"] == "acme-c1"}
    assert windows["2026-10-31"] == ("2026-10-31 06:00 UTC", "Sat 2026-10-31 02:00 EDT")
    assert windows["2026-11-01"] == ("2026-11-01 07:00 UTC", "Sun 2026-11-01 02:00 EST")
    assert min(r["at"] for r in rows) >= "2026-10-15T12" and max(r["at"] for r in rows) < "2026-12-10T12"

    only = upkeep_here(
        home, "calendar", "--customer", "acme", "--weeks", "8", "--json", "--now", "2026-10-15T12:00Z"
    )
    assert {r["customer"] for r in json.loads(only.stdout)} == {"acme"}


def test_calendar_table_shows_the_dst_change(home: Path) -> None:
    result = upkeep_here(
        home, "calendar", "--customer", "acme", "--weeks", "8", "--now", "2026-10-15T12:00:00Z"
    )
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert f"acme: Sun 2026-11-01 01:00 EST: {NY_DST}" in result.stdout.splitlines()
    assert "Sun 2026-11-01 02:00 EST" in result.stdout  # the first window after the change, in the table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("calendar", "--now", "next tuesday"), "--now 'next tuesday' is not an ISO date or date-time"),
        (("calendar", "--customer", "initech"), "no customer 'initech' (customers: acme, globex)"),
        (("calendar", "--weeks", "0"), "weeks 0: expected 1 to 52"),
        (("schedule", "acme-c1", "--to", "9.12.0"), "acme/acme-c1: no"),  # no path / no release
        (("defer", "update-7", "--to", "2026-12-01"), "no update 7"),
        (("defer", "seven", "--to", "2026-12-01"), "update 'seven': expected an update id such as update-42"),
        (("cancel-update", "7"), "no update 7"),
    ],
)
def test_refusals_write_nothing(home: Path, args: tuple[str, ...], message: str) -> None:
    assert message in refused(home, *args)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("timezone: America/New_York", "timezone: America/Gotham"),
            "'America/Gotham' is not an IANA time zone",
        ),
        (("duration: 4h}", "duration: 0m}"), "window: duration: '0m' is not between 1 minute and 7 days"),
        (
            (
                "    contacts: [{email: ops@acme.example}]",
                "    blackouts: [{start: 2026-12-20, end: 2026-12-01}]",
            ),
            "blackout: end: 2026-12-01 is before start 2026-12-20",
        ),
    ],
)
def test_bad_inventory_is_refused_at_its_line(home: Path, edit: tuple[str, str], message: str) -> None:
    bad = home.parent / "bad.yaml"
    old, new = edit
    assert old in INVENTORY
    bad.write_text(INVENTORY.replace(old, new, 1))
    line = INVENTORY[: INVENTORY.index(old)].count("\n") + 1
    error = refused(home, "inventory", "import", str(bad))
    assert error.startswith(f"{bad}:{line}: ") and message in error, error


def test_schedule_defer_cancel_and_send(tmp_path: Path) -> None:
    home = imported(tmp_path)
    result = upkeep_here(home, "schedule", "acme-c1", "--to", "9.9.0", "--json")
    assert result.returncode == 0, result.stderr
    update = json.loads(result.stdout)
    start = datetime.fromisoformat(update["slot_start"])
    assert (update["update"], update["state"], update["notice"]["kind"]) == (
        "update-1",
        "planned",
        "scheduled",
    )
    assert datetime.fromisoformat(update["slot_end"]) - start == timedelta(minutes=20)  # 2 nodes
    assert start.astimezone(NEW_YORK).strftime("%H:%M") == "02:00"  # a window start, local time
    assert start - datetime.now(UTC) >= timedelta(hours=72)  # the default notice

    result = upkeep_here(home, "notices", "send")  # the customer is told
    assert result.stdout.startswith("notices: 1 sent"), result.stdout

    far = (start + timedelta(days=30)).date().isoformat()
    assert "a deferral may move it by at most 7 days" in refused(home, "defer", "update-1", "--to", far)
    assert "is not an ISO date or date-time" in refused(home, "defer", "update-1", "--to", "2026-13-01")

    later = (start + timedelta(days=2)).date().isoformat()  # a bare date: the first window that day (local)
    result = upkeep_here(home, "defer", "update-1", "--to", later, "--json")
    assert result.returncode == 0, result.stderr
    deferred = json.loads(result.stdout)
    moved = datetime.fromisoformat(deferred["slot_start"]).astimezone(NEW_YORK)
    assert (moved.date().isoformat(), moved.strftime("%H:%M"), deferred["deferrals"]["used"]) == (
        later,
        "02:00",
        1,
    )
    assert (deferred["notice"]["kind"], deferred["notice"]["sequence"]) == ("deferred", 2)

    result = upkeep_here(home, "cancel-update", "update-1", "--reason", "customer asked")
    assert result.returncode == 0, result.stderr
    assert "notice  cancelled #3 queued" in result.stdout

    result = upkeep_here(home, "notices", "send")  # the deferral was never delivered: the cancel says it all
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("notices: 1 sent, 0 retrying later, 0 refused, 1 superseded")
    sent = sorted(path.name.split(".")[1] for path in (home / "outbox").glob("*.eml"))
    assert sent == ["cancelled", "scheduled"]
    result = upkeep_here(home, "notices", "list", "--update", "update-1", "--json")
    assert result.returncode == 0, result.stderr
    states = [(n["kind"], n["sequence"], n["state"]) for n in json.loads(result.stdout)]
    assert states == [("cancelled", 3, "sent"), ("deferred", 2, "superseded"), ("scheduled", 1, "sent")]


def test_an_urgent_update_cannot_be_deferred_from_the_cli(tmp_path: Path) -> None:
    home = imported(tmp_path)
    result = upkeep_here(home, "schedule", "acme-c1", "--to", "9.9.0", "--urgent", "--json")
    assert result.returncode == 0, result.stderr
    update = json.loads(result.stdout)
    assert (update["id"], update["urgent"], update["deferrals"]) == (1, True, {"used": 0, "left": 0})
    assert set(update["slot"]) == {"start", "end"} and update["held_reason"] is None
    later = (datetime.fromisoformat(update["slot"]["start"]) + timedelta(days=2)).date().isoformat()
    line = refused(home, "defer", "update-1", "--to", later)
    assert line.startswith("cannot defer update-1: it is urgent"), line


def test_import_names_each_update_it_moves_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    home = imported(tmp_path)
    result = upkeep_here(home, "schedule", "acme-c1", "--to", "9.9.0", "--json")
    assert result.returncode == 0, result.stderr
    old = datetime.fromisoformat(json.loads(result.stdout)["slot"]["start"])
    day = old.astimezone(NEW_YORK).date().isoformat()
    frozen = tmp_path / "frozen.yaml"
    blackout = f'    blackouts: [{{start: "{day}", end: "{day}", reason: quarter close}}]\n'
    frozen.write_text(
        INVENTORY.replace(
            "    contacts: [{email: ops@acme.example}]\n",
            "    contacts: [{email: ops@acme.example}]\n" + blackout,
            1,
        )
    )

    before = database(home)
    result = upkeep_here(home, "inventory", "import", "--dry-run", str(frozen))
    assert result.returncode == 0, result.stderr
    assert database(home) == before  # nothing written: no blackout, no move, no notice
    [line] = [x for x in result.stdout.splitlines() if x.startswith("update 1 ")]
    assert line.startswith(
        "update 1 acme/acme-c1: slot now inside blackout 'quarter close' -> would move to "
    )
    assert line.endswith("America/New_York, customer would be notified")

    result = upkeep_here(home, "inventory", "import", str(frozen))
    assert result.returncode == 0, result.stderr
    [moved] = [x for x in result.stdout.splitlines() if x.startswith("update 1 ")]
    shown = json.loads(upkeep_here(home, "show", "1", "--json").stdout)
    new = datetime.fromisoformat(shown["slot"]["start"])
    local = new.astimezone(NEW_YORK).strftime("%a %d %b %H:%M")
    assert moved == (
        "update 1 acme/acme-c1: slot now inside blackout 'quarter close' -> "
        f"moved to {local} America/New_York, customer notified"
    )
    assert new.astimezone(NEW_YORK).date().isoformat() != day and new > old
    assert [(n["kind"], n["sequence"]) for n in shown["notices"]] == [("scheduled", 1), ("rescheduled", 2)]
    assert shown["held_reason"] is None and shown["window_timezone"] == "America/New_York"

    result = upkeep_here(home, "inventory", "import", str(frozen))  # the same file again: nothing to move
    assert result.returncode == 0 and "update 1" not in result.stdout


def test_a_p1_case_holds_the_planned_update_and_closing_it_reslots_it(tmp_path: Path) -> None:
    home = imported(tmp_path)
    assert upkeep_here(home, "schedule", "acme-c1", "--to", "9.9.0").returncode == 0
    opened = upkeep_here(
        home, "case", "open", "--cluster", "acme-c1", "--priority", "P1", "--subject", "outage"
    )
    assert opened.returncode == 0, opened.stderr
    [held] = [x for x in opened.stdout.splitlines() if x.startswith("update 1 ")]
    assert held.startswith("update 1 acme/acme-c1: case CASE-1 (P1) is open on the cluster; no valid slot: ")
    assert held.endswith("-> held, no valid slot; SRE alerted")
    shown = json.loads(upkeep_here(home, "show", "1", "--json").stdout)
    assert "CASE-1 (P1)" in shown["held_reason"]
    calendar = json.loads(
        upkeep_here(home, "calendar", "--customer", "acme", "--weeks", "2", "--json").stdout
    )
    assert any(row["what"] == "update" and "HELD" in row["detail"] for row in calendar)

    closed = upkeep_here(home, "case", "close", "CASE-1", "--reason", "fixed")
    assert closed.returncode == 0, closed.stderr
    [moved] = [x for x in closed.stdout.splitlines() if x.startswith("update 1 ")]
    assert " -> moved to " in moved and moved.endswith("America/New_York, customer notified")
    shown = json.loads(upkeep_here(home, "show", "1", "--json").stdout)
    assert shown["held_reason"] is None and shown["notices"][-1]["kind"] == "rescheduled"
