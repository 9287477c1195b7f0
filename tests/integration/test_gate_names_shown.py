"""An approver named in the Prefect UI's resume form is stored as typed (flows/approval.py: refusing an
answer Prefect already took is not possible), so its text reaches an SRE's terminal through `upkeep show`
and `upkeep runs`. A name holding a terminal escape (clear the screen, set the window title), a newline
that forges a line of its own ("refused by root"), or a right-to-left override must be shown escaped, on
one line, never acted on by the terminal; --json already escapes them (JSON strings) and keeps them whole.

No lab: the run and its decision are written as the gate writes them (its `decision` and `refusal`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import select

from flows.approval import decision
from inventory.db import session_scope
from inventory.models import Cluster, RunState, UpgradeRun
from inventory.runs import create_run, refusal
from tests.integration.test_takeover import _database_url
from tests.support.cli import home_env, upkeep_in_process
from tests.support.fleets import one_node_fleet

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
# What a hostile (or careless) form answer holds: ESC sequences (clear screen, window title, colour), a
# newline forging a second decision line, a carriage return, a right-to-left override.
HOSTILE = "mallory\x1b]0;owned\x07\x1b[2J\nrefused by root at 2026-12-07T10:00:00: fine\r\u202eevil"
REASON = "no\x1b[31m red"


def _a_cli_run(session: Any, state: RunState) -> UpgradeRun:
    """A run of the fleet's one cluster to 9.9.0, asked for on the CLI, in `state` (not yet flushed)."""
    cluster = session.exec(select(Cluster)).one()
    return create_run(
        cluster,
        to_version="9.9.0",
        source="cli",
        requested_by="t",
        session=session,
        state=state,
    )


def _at_the_gate_held_by(engine: Any, owner: str, until: datetime, *, since: datetime | None = None) -> int:
    """A running run waiting at the approval gate, its lease held by `owner` until `until` (taken at
    `since` when given, else as `create_run` leaves it); its id."""
    with session_scope(engine) as session:
        run = _a_cli_run(session, RunState.running)
        run.needs_approval, run.lease_owner, run.lease_until = True, owner, until
        if since is not None:
            run.lease_since = since
        session.add(run)
        session.flush()
        return run.id or 0


def _stopped(engine: Any, tmp_path: Path, run_id: int) -> str:
    """What `upkeep cancel RUN --reason froze` says (it must succeed), on one line."""
    env = home_env(tmp_path / "home", UPKEEP_DATABASE_URL=_database_url(engine), COLUMNS="400")
    said = upkeep_in_process("cancel", str(run_id), "--reason", "froze", env=env)
    assert said.returncode == 0, said
    return " ".join(said.stdout.split())


def _refused_by_hostile_name(engine: Any, tmp_path: Path) -> int:
    one_node_fleet(engine, tmp_path, {"acme": 1}, clock=lambda: NOW)
    with session_scope(engine) as session:
        run = _a_cli_run(session, RunState.cancelled)
        run.needs_approval, run.reason = True, refusal(HOSTILE, REASON)
        session.add(run)
        session.flush()
        assert run.id is not None
        session.add(decision(run.id, HOSTILE, approved=False, reason=REASON))
        return run.id


def test_a_hostile_approver_name_is_shown_escaped_on_one_line(engine: Any, tmp_path: Path):
    run_id = _refused_by_hostile_name(engine, tmp_path)
    env = home_env(tmp_path / "home", UPKEEP_DATABASE_URL=_database_url(engine), COLUMNS="400")

    for args in (["show", str(run_id)], ["runs"]):
        said = upkeep_in_process(*args, env=env)
        assert said.returncode == 0, said
        for raw in ("\x1b", "\x07", "\r", "\u202e"):
            assert raw not in said.stdout, (args, said.stdout)
    # One line each: no forged "refused by root" line in `show`, the run's one row in `runs` (400 columns).
    shown = upkeep_in_process("show", str(run_id), env=env).stdout
    assert not [line for line in shown.splitlines() if line.startswith("refused by root")], shown
    listed = upkeep_in_process("runs", env=env).stdout
    assert len([line for line in listed.splitlines() if line.startswith("│")]) == 1, listed  # its one row
    [line] = [line for line in shown.splitlines() if line.startswith("refused by ")]
    assert "\\x1b[2J" in line and "\\n" in line and "\\u202e" in line, line  # escaped, not dropped

    # --json: exact, as stored (a JSON string escapes them).
    data = json.loads(upkeep_in_process("show", str(run_id), "--json", env=env).stdout)
    assert [d["by"] for d in data["decisions"]] == [HOSTILE]
    assert data["reason"] == refusal(HOSTILE, REASON)


def test_the_customer_hears_the_refusal_s_reason_never_the_approver_s_own_text(engine: Any, tmp_path: Path):
    """The customer's 'cancelled' notice says why the update was not approved. It took what followed the
    first ': ' of the run's reason ("approval refused by WHO: REASON"), so an approver named in the
    Prefect UI with a ': ' of its own ("Jane (CAB): internal ...") had the rest of their name sent to the
    customer. The reason is the decision's own."""
    from types import SimpleNamespace
    from typing import cast

    from flows.outcomes import refused
    from inventory.outbox import Notice
    from tests.support.fleets import planned_run

    runtime = one_node_fleet(engine, tmp_path, {"acme": 1}, clock=lambda: NOW)
    run_id = planned_run(engine, "acme-c00", NOW, NOW)
    who = "Jane Doe (CAB): internal only, the customer is on the churn list"
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.state, run.needs_approval, run.reason = RunState.running, True, refusal(who, "CHG-7 freeze")
        session.add(run)
        session.add(decision(run_id, who, approved=False, reason="CHG-7 freeze"))
        announced = Notice(
            idempotency_key=f"update-{run_id}:scheduled:1",
            kind="scheduled",
            update_ref=f"update-{run_id}",
            customer_id=session.exec(select(Cluster)).one().customer_id,
            subject="s",
            body_text="b",
            body_html="b",
        )
        session.add(announced)
    refused(runtime, cast(Any, SimpleNamespace(label="acme/acme-c00 9.8.0→9.9.0")), run_id)

    with session_scope(engine) as session:
        [told] = session.exec(select(Notice).where(Notice.kind == "cancelled")).all()
        assert "not approved: CHG-7 freeze" in told.body_text, told.body_text
        assert "churn" not in told.body_text + told.subject + told.ics, told.body_text


def test_the_prefect_ui_summary_shows_an_approver_s_markdown_as_text(engine: Any, tmp_path: Path):
    """The run's summary artifact is Markdown the Prefect UI renders; its cause is the run's reason, which
    holds the approver and reason as typed in the resume form. Markdown or HTML there rendered: a link
    dressed as a change ticket, an image fetched from anywhere (a tracking pixel), raw HTML. Shown as
    the text it is."""
    from flows.plan import plan_update
    from flows.report import _summary_lines

    runtime = one_node_fleet(engine, tmp_path, {"acme": 1}, clock=lambda: NOW)
    who = "[CHG-1234 approved](https://evil.example/login) ![](https://evil.example/pixel.gif) <img src=x>"
    with session_scope(engine) as session:
        cluster = session.exec(select(Cluster)).one()
        plan = plan_update(cluster.name, "9.9.0", session=session)
        run = _a_cli_run(session, RunState.cancelled)
        run.needs_approval, run.reason = True, refusal(who, "*see* `CHG`")
        session.add(run)
        session.flush()
        run_id = run.id or 0

    [cause] = [line for line in _summary_lines(runtime, plan, run_id, "cancelled") if "Cause" in line]
    for live in ("](https://", "![", "<img", "*see*", "`CHG`"):
        assert live not in cause, cause
    assert "evil.example" in cause  # shown, as text


def test_a_stop_at_a_gate_held_on_another_machine_promises_seconds_only_if_that_process_lives(
    engine: Any, tmp_path: Path
):
    """The CLI can tell a process on its own machine is gone (its pid), never one elsewhere: until that
    process's lease runs out it cannot know whether the gate's watcher lives. "It stops within seconds"
    was said unconditionally; if that machine was lost, nothing ends the run before the dispatcher's
    take-over after the lease. Both are said, with the time."""
    from datetime import timedelta

    from inventory.types import utcnow

    one_node_fleet(engine, tmp_path, {"acme": 1}, clock=lambda: NOW)
    until = utcnow() + timedelta(minutes=5)
    run_id = _at_the_gate_held_by(engine, "db7.elsewhere:4242/abc123", until)
    line = _stopped(engine, tmp_path, run_id)
    assert "within seconds if its process (db7.elsewhere:4242) lives" in line, line
    assert f"its lease runs out at {until:%Y-%m-%d %H:%M:%S} UTC" in line, line


def test_a_stop_at_a_gate_held_where_its_pid_cannot_be_seen_promises_seconds_only_if_it_lives(
    engine: Any, tmp_path: Path
):
    """A holder with this host name whose birth is from another space (a pod's other container, this
    machine before a reboot): its pid, free here, made the CLI say "not answering" while that process
    may live and stop within seconds. Whether it lives cannot be told from here before its lease runs
    out: said as for another machine, naming why."""
    import socket
    import subprocess
    from datetime import timedelta

    from inventory.types import utcnow

    one_node_fleet(engine, tmp_path, {"acme": 1}, clock=lambda: NOW)
    with subprocess.Popen(["true"]) as gone:
        pass
    host = socket.gethostname()
    until = utcnow() + timedelta(minutes=5)
    run_id = _at_the_gate_held_by(engine, f"{host}:{gone.pid}@1.000000000000/abc123", until)
    line = _stopped(engine, tmp_path, run_id)
    assert f"within seconds if its process ({host}:{gone.pid}) lives" in line, line
    assert "cannot be seen from here" in line, line
    assert f"its lease runs out at {until:%Y-%m-%d %H:%M:%S} UTC" in line, line
    assert "not answering" not in line, line


def test_a_stop_at_a_gate_whose_holder_s_pid_was_reused_says_it_is_not_answering(engine: Any, tmp_path: Path):
    """The gate's process was killed long ago and its pid given to another process since (here: a `sleep`
    started after the lease was taken). Its lease has not run out yet: the CLI told a dead local holder by
    its pid, and the pid answers, so "it stops within seconds" was said, and nothing ended the run before
    the take-over. The holder's owner records its birth (flows/lease.new_owner): here one born when this
    test process was, with the pid the `sleep` has now; the clock (fixed at NOW) plays no part."""
    import os
    import socket
    import subprocess
    from datetime import timedelta

    from flows.lease import new_owner
    from inventory.types import utcnow

    one_node_fleet(engine, tmp_path, {"acme": 1}, clock=lambda: NOW)
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        owner = new_owner().replace(f":{os.getpid()}@", f":{stranger.pid}@", 1)
        assert owner.startswith(f"{socket.gethostname()}:{stranger.pid}@"), owner  # /proc read here
        since, until = utcnow() - timedelta(hours=1), utcnow() + timedelta(minutes=5)
        run_id = _at_the_gate_held_by(engine, owner, until, since=since)
        line = _stopped(engine, tmp_path, run_id)
        assert "is not answering" in line, line
    finally:
        stranger.kill()
        stranger.wait()


def test_a_lease_owner_written_by_hand_reaches_the_terminal_escaped(engine: Any, tmp_path: Path):
    """A lease owner is a database column (and its host part the kernel's host name, any bytes root
    set): one holding a terminal escape or a newline was printed as is by `upkeep show` ("held by
    ...") and by the stop's line naming the holder. Shown escaped, on one line; --json keeps it whole."""
    from datetime import timedelta

    from inventory.types import utcnow

    one_node_fleet(engine, tmp_path, {"acme": 1}, clock=lambda: NOW)
    owner = "db7.elsewhere\x1b]0;owned\x07\x1b[2J:4242\nrefused by root/abc123"
    run_id = _at_the_gate_held_by(engine, owner, utcnow() + timedelta(minutes=5))
    env = home_env(tmp_path / "home", UPKEEP_DATABASE_URL=_database_url(engine), COLUMNS="400")
    shown = upkeep_in_process("show", str(run_id), env=env)
    as_json = upkeep_in_process("show", str(run_id), "--json", env=env)
    line = _stopped(engine, tmp_path, run_id)
    assert shown.returncode == 0, shown
    for said in (shown.stdout, line):
        assert "\x1b" not in said and "\x07" not in said, said
        assert "\\x1b]0;owned\\x07" in said, said
    [held] = [text for text in shown.stdout.splitlines() if "held by" in text]
    assert "\\nrefused by root" in held, shown.stdout
    assert json.loads(as_json.stdout)["lease_owner"] == owner


def _approved_at_a_gate_held_by(engine: Any, tmp_path: Path, monkeypatch: Any, owner: str, until: Any) -> str:
    """What `upkeep approve RUN` says of a run at its gate held by `owner` until `until` (Prefect's
    resume of the gate's pause taken as given)."""
    from upkeep.updates import approve_run

    runtime = one_node_fleet(engine, tmp_path, {"acme": 1}, clock=lambda: NOW)
    monkeypatch.setattr("flows.runtime.current", lambda: runtime)
    monkeypatch.setattr("flows.approval.resume_flow_run", lambda *_args, **_kwargs: None)
    run_id = _at_the_gate_held_by(engine, owner, until)
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.flow_run_id = "00000000-0000-0000-0000-000000000001"
        session.add(run)
    return approve_run(run_id, engine=engine, approved=True, reason="CHG-1", actor="op")


def test_an_approval_at_a_gate_held_where_its_process_cannot_be_seen_says_what_carries_it_on(
    engine: Any, tmp_path: Path, monkeypatch: Any
):
    """`upkeep approve` of a run whose holder runs where its process cannot be seen from here (a pod's
    other container, this machine before a reboot) said "run N approved" only: if that process is
    gone, nothing carries the run on before the take-over after its lease, and the operator waits for
    an upgrade that is not coming. Said as the stop there says it, naming the holder and the time."""
    import socket
    import subprocess
    from datetime import timedelta

    with subprocess.Popen(["true"]) as gone:
        pass
    host, until = socket.gethostname(), NOW + timedelta(minutes=5)  # the runtime's clock
    line = _approved_at_a_gate_held_by(
        engine, tmp_path, monkeypatch, f"{host}:{gone.pid}@1.000000000000/abc123", until
    )
    assert line.startswith("run 1 approved; "), line
    assert f"within seconds if its process ({host}:{gone.pid}) lives" in line, line
    assert "cannot be seen from here" in line, line
    assert f"its lease runs out at {until:%Y-%m-%d %H:%M:%S} UTC carries it on" in line, line


def test_an_approval_at_a_gate_held_on_another_machine_says_what_carries_it_on(
    engine: Any, tmp_path: Path, monkeypatch: Any
):
    """The same for a holder on another machine, as the stop there says it."""
    from datetime import timedelta

    until = NOW + timedelta(minutes=5)
    line = _approved_at_a_gate_held_by(engine, tmp_path, monkeypatch, "db7.elsewhere:4242/abc123", until)
    assert line.startswith("run 1 approved; "), line
    assert "within seconds if its process (db7.elsewhere:4242) lives; if that machine is gone" in line, line
    assert f"its lease runs out at {until:%Y-%m-%d %H:%M:%S} UTC carries it on" in line, line
