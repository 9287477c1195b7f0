"""Adversarial pass adv41: a cloud-release run that stalled (h-loop: the third window in a row with no
node upgraded pauses it, not re-slotted, until the SRE resumes or cancels it) and the rollout's start
gate, which counts paused runs as in flight (`max_concurrent`, `per_customer_limit`).

The fleet and helpers of test_cloud_release.py (SQLite and PostgreSQL, no Prefect server). The stalled
run is left as `flows.outcomes._stalled` leaves one (tests/unit/test_window_stalled.py drives the flow
there): paused, its reason "stalled: ...", its start recorded, no node touched."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from inventory.db import session_scope
from inventory.models import RunState
from tests.integration.test_cloud_release import (
    CANARY,
    EARLY,
    _finish,
    _gate,
    _last_slot,
    _plan,
    _runs,
    _start,
    fleet,
)

__all__ = ["fleet"]  # the fixture, used here by name


def _to_the_broad_ring(engine: Engine) -> datetime:
    """Planned with one update per customer at once; canary and early done; c07 (initech) started at
    the returned time."""
    _plan(engine, soak_minutes=0, per_customer_limit=1)
    due = _last_slot(engine) + timedelta(minutes=1)
    _start(engine, CANARY, due)
    _finish(engine, CANARY, RunState.succeeded, due)
    _start(engine, EARLY, due)
    _finish(engine, EARLY, RunState.succeeded, due)
    _start(engine, ["c07"], due)
    return due


def _stalled(engine: Engine, name: str) -> None:
    with session_scope(engine) as session:
        run = _runs(session)[name]
        run.state = RunState.paused
        run.reason = (
            "stalled: no node upgraded in 3 windows in a row, the last as the customer's support tunnel was "
            f"closed on {name}-n1 at the window's start; not re-slotted: fix the cause, then "
            f"`upkeep resume {run.id}` in a window (or `upkeep cancel {run.id}`)"
        )
        session.add(run)


def test_a_stalled_run_that_touched_no_node_holds_none_of_its_customer_s_slots(
    fleet: Engine,
) -> None:
    """initech's broad-ring cluster c07 stalls (its support tunnel never opened: three windows, not one
    node touched). Its other broad-ring cluster c11 then waited at the gate - "1 update of this customer
    is in flight" - window after window, re-slotted each time with a 'rescheduled' mail (a missed
    window, not a carry-over: never stalled, never bounded), for as long as nobody acted on c07. Before
    the stall bound, c07 looped 'planned' and held nothing. A stalled run with no node touched is no
    update in flight: its cluster runs what it ran; the half-upgraded cluster the limits guard is not
    there."""
    due = _to_the_broad_ring(fleet)
    _stalled(fleet, "c07")  # initech
    with session_scope(fleet) as session:
        assert _runs(session)["c07"].state == RunState.paused

    assert _gate(fleet, "c11", due + timedelta(days=1)) is None  # initech's other broad cluster


def test_a_stalled_run_that_upgraded_a_node_still_counts_in_flight(fleet: Engine) -> None:
    """The same, with c03 half-upgraded (node 1 verified) before it stalled: a cluster on mixed versions
    is what the limits are for; it still holds its customer's slot."""
    from inventory.models import NodeStep, StepState

    due = _to_the_broad_ring(fleet)
    with session_scope(fleet) as session:
        run = _runs(session)["c07"]
        assert run.id is not None
        session.add(NodeStep(run_id=run.id, node_id=None, step="upgrade", state=StepState.succeeded))
    _stalled(fleet, "c07")

    assert _gate(fleet, "c11", due + timedelta(days=1)) == "1 update of this customer is in flight (limit 1)"


def test_release_status_shows_a_stalled_run_as_stalled_not_running(
    fleet: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`upkeep release status` counted a stalled run (paused, not re-slotted until someone acts) among
    `running`, as an SRE-paused one: the release looked under way where one of its clusters needs a
    person. Its own status and count, listed with its reason where the CLI and the artifact list what
    needs attention; an SRE's pause still reads running."""
    from typer.testing import CliRunner

    from flows.rollout import release_status
    from inventory.releases import status_markdown
    from upkeep import cli as cli_module
    from upkeep import cli_common

    _to_the_broad_ring(fleet)
    _stalled(fleet, "c07")

    with session_scope(fleet) as session:
        status = release_status("9.10.0", session=session)
    [broad] = [ring for ring in status["rings"] if ring["ring"] == "broad"]
    [c07] = [row for row in broad["clusters"] if row["cluster"] == "c07"]
    assert c07["status"] == "stalled" and c07["reason"].startswith("stalled: "), c07
    assert (broad["stalled"], broad["running"]) == (1, 0), broad
    markdown = status_markdown(status)
    assert (
        "| stalled |" in markdown.splitlines()[2] and "- c07 (broad): stalled — stalled: no node" in markdown
    )

    from upkeep.console import console

    monkeypatch.setattr(cli_common, "_opened", {"engine": fleet})
    monkeypatch.setattr(console, "width", 250)  # every column's name whole
    shown = CliRunner().invoke(cli_module.app, ["release", "status", "9.10.0"], terminal_width=250)
    assert shown.exit_code == 0, shown.output
    head = next(line for line in shown.output.splitlines() if " ring " in line)  # the counts table
    assert "running" in head and " stalled " in head, shown.output
    assert "c07 (broad) stalled: stalled: no node" in shown.output, shown.output


def test_upkeep_show_and_runs_call_a_stalled_run_stalled(
    fleet: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`upkeep runs` and `upkeep show` printed a stalled run as `paused`, as one an SRE paused and will
    resume: its phase says it stalled (its state stays `paused`)."""
    from inventory.run_report import run_row

    _to_the_broad_ring(fleet)
    _stalled(fleet, "c07")
    with session_scope(fleet) as session:
        row = run_row(_runs(session)["c07"], session)
    assert (row["state"], row["phase"]) == ("paused", "stalled"), row


def test_release_status_shows_an_sre_paused_run_as_paused_not_running(
    fleet: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """adv49: `upkeep pause` mid-rollout (after node 1 of c07): nothing goes on with it until an SRE
    resumes it, yet `release status` counted it `running` - the release looked under way there, and the
    paused cluster was not among what needs attention. Its own status and count (`paused`, apart from
    `stalled`), listed with its reason in the CLI and the artifact."""
    from typer.testing import CliRunner

    from flows.rollout import release_status
    from inventory.releases import status_markdown
    from upkeep import cli as cli_module
    from upkeep import cli_common
    from upkeep.console import console

    _to_the_broad_ring(fleet)
    with session_scope(fleet) as session:
        run = _runs(session)["c07"]
        run.state, run.reason = RunState.paused, "paused by request after 1 of 2 nodes"
        session.add(run)

    with session_scope(fleet) as session:
        status = release_status("9.10.0", session=session)
    [broad] = [ring for ring in status["rings"] if ring["ring"] == "broad"]
    [c07] = [row for row in broad["clusters"] if row["cluster"] == "c07"]
    assert c07["status"] == "paused", c07
    assert (broad["paused"], broad["running"], broad["stalled"]) == (1, 0, 0), broad
    markdown = status_markdown(status)
    assert "| paused |" in markdown.splitlines()[2], markdown
    assert "- c07 (broad): paused — paused by request after 1 of 2 nodes" in markdown, markdown

    monkeypatch.setattr(cli_common, "_opened", {"engine": fleet})
    monkeypatch.setattr(console, "width", 250)
    shown = CliRunner().invoke(cli_module.app, ["release", "status", "9.10.0"], terminal_width=250)
    assert shown.exit_code == 0, shown.output
    head = next(line for line in shown.output.splitlines() if " ring " in line)
    assert " paused " in head, shown.output
    assert "c07 (broad) paused: paused by request after 1 of 2 nodes" in shown.output, shown.output
