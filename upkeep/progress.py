"""Live progress of updates from the CLI (issue #16 item 4), read from our own record, not from logs.

A background thread polls the steps the flows record (`NodeStep`: flows/records.py writes each one
before and after it runs) for the updates being carried out. On a terminal it draws a Rich live table,
a row per node: its current step, elapsed time, outcome. Anywhere else (a pipe, a log file, CI) it prints
one plain line per event: a step started, a step ended. With `--json` nothing is shown (stdout is the
JSON document). A poll that fails (the database restarting, ...) is skipped: progress never fails a run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from inventory.models import Node, NodeStep, StepState, UpgradeRun
from inventory.types import utcnow

POLL_SECONDS = 0.5
RUN_ROW = "(run)"  # steps of no node: the package's download


@dataclass
class NodeRow:
    """Where one node (or the run itself, RUN_ROW: the download) stands."""

    what: str  # "update-7", or the case a diagnostics bundle is for
    node: str
    step: str = ""
    state: str = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    note: str = ""

    def elapsed(self, now: datetime) -> str:
        if self.started_at is None:
            return ""
        return f"{((self.finished_at or now) - self.started_at).total_seconds():.1f}s"


@dataclass(frozen=True)
class StepEvent:
    what: str
    node: str
    step: str
    state: str
    seconds: float | None
    note: str

    def line(self) -> str:
        took = f" after {self.seconds:.1f}s" if self.seconds is not None else ""
        note = f": {self.note}" if self.note and self.state != StepState.succeeded else ""
        return f"{self.what} {self.node} {self.step} {self.state}{took}{note}"


class StepPoller:
    """What changed in the steps of `runs()` since the last poll: events, and a row per node."""

    def __init__(self, engine: Engine, runs: Callable[[Session], list[int]]) -> None:
        self.engine, self.runs = engine, runs
        self.seen: dict[int, str] = {}  # step id -> state last reported
        self.rows: dict[tuple[int, str], NodeRow] = {}

    def poll(self) -> list[StepEvent]:
        events: list[StepEvent] = []
        with Session(self.engine) as session:
            run_ids = self.runs(session)
            if not run_ids:
                return []
            for run in session.exec(select(UpgradeRun).where(col(UpgradeRun.id).in_(run_ids))):
                assert run.id is not None
                self.rows.setdefault((run.id, RUN_ROW), NodeRow(f"update-{run.id}", RUN_ROW))
                for member in session.exec(
                    select(Node).where(Node.cluster_id == run.cluster_id).order_by(col(Node.id))
                ):
                    assert run.id is not None
                    key = (run.id, member.hostname)
                    self.rows.setdefault(key, NodeRow(f"update-{run.id}", member.hostname))
            steps = session.exec(
                select(NodeStep, Node.hostname)
                .outerjoin(Node, col(Node.id) == col(NodeStep.node_id))
                .where(col(NodeStep.run_id).in_(run_ids))
                .order_by(col(NodeStep.id))
            ).all()
        for step, hostname in steps:
            assert step.id is not None
            node = str(hostname) if hostname else RUN_ROW
            state = str(step.state)
            what = f"update-{step.run_id}"
            row = self.rows.setdefault((step.run_id, node), NodeRow(what, node))
            row.step, row.state, row.started_at, row.finished_at = step.step, state, step.started_at, None
            row.finished_at = step.finished_at
            row.note = _last_line(step.output_tail) if state != StepState.succeeded else ""
            if self.seen.get(step.id) == state:
                continue
            if step.id not in self.seen and state != StepState.started:
                # Seen only once it had ended (a fast step, or one of an earlier attempt): both events.
                events.append(StepEvent(what, node, step.step, StepState.started, None, ""))
            self.seen[step.id] = state
            seconds = (step.finished_at - step.started_at).total_seconds() if step.finished_at else None
            events.append(StepEvent(what, node, step.step, state, seconds, row.note))
        return events

    def table(self) -> Table:
        return _table(list(self.rows.values()))


def _table(rows: list[NodeRow]) -> Table:
    now = utcnow()
    table = Table("what" if any(not r.what.startswith("update-") for r in rows) else "update")
    for column in ("node", "step", "elapsed", "outcome"):
        table.add_column(column)
    for row in rows:
        outcome = _OUTCOME.get(row.state, "[dim]pending[/]")
        if row.note:
            outcome += f" {escape(row.note[:60])}"
        table.add_row(escape(row.what), escape(row.node), escape(row.step), row.elapsed(now), outcome)
    return table


class EventBoard:
    """Rows fed by the flow's callback (`Runtime.progress`), for flows that record no steps of ours
    (diagnostics collection)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.rows: dict[str, NodeRow] = {}
        self.pending: list[StepEvent] = []
        self.lock = threading.Lock()

    def event(self, node: str, step: str, state: str, note: str = "") -> None:
        with self.lock:
            row = self.rows.setdefault(node, NodeRow(self.what, node))
            now = utcnow()
            if state == StepState.started or row.step != step:
                row.started_at, row.finished_at = now, None
            if state != StepState.started:
                row.finished_at = now
            row.step, row.state, row.note = step, state, note
            seconds = None
            if row.finished_at is not None and row.started_at is not None:
                seconds = (row.finished_at - row.started_at).total_seconds()
            self.pending.append(StepEvent(self.what, node, step, state, seconds, note))

    def poll(self) -> list[StepEvent]:
        with self.lock:
            events, self.pending = self.pending, []
            return events

    def table(self) -> Table:
        with self.lock:
            return _table(list(self.rows.values()))


_OUTCOME: dict[str, str] = {
    StepState.started: "[yellow]running[/]",
    StepState.succeeded: "[green]ok[/]",
    StepState.failed: "[red]failed[/]",
    StepState.interrupted: "[red]interrupted[/]",
}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


@contextmanager
def watch(poller: StepPoller | EventBoard, *, console: Console, enabled: bool = True) -> Iterator[None]:
    """Show what `poller` sees while the body runs (a Rich live table on a terminal, else a line per
    event); after it, one last poll so the final events are shown too."""
    if not enabled:
        yield
        return
    with suppress(Exception):  # what was recorded before (a resumed run's earlier attempts): no events
        poller.poll()
    stop = threading.Event()
    live = (
        Live(poller.table(), console=console, refresh_per_second=4, transient=False)
        # A dumb terminal (TERM=dumb) cannot redraw: Live would show nothing until the end there.
        if console.is_terminal and not console.is_dumb_terminal
        else None
    )

    def show(events: list[StepEvent]) -> None:
        if live is not None:
            live.update(poller.table())
            return
        for event in events:
            console.print(event.line(), markup=False, soft_wrap=True, highlight=False)

    def tick() -> None:
        try:
            show(poller.poll())
        except Exception:  # the database away for a moment, ...: the next poll shows it
            return

    def loop() -> None:
        while not stop.wait(POLL_SECONDS):
            tick()

    thread = threading.Thread(target=loop, name="upkeep-progress", daemon=True)
    if live is not None:
        live.start()
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        tick()
        if live is not None:
            live.stop()


def runs_held_by_this_process() -> Callable[[Session], list[int]]:
    """The updates this process (a dispatcher tick run here) carries out: those it was seen holding
    the lease of (a run that ended keeps its place). Its owners (flows/lease.new_owner) start with
    `host:pid@birth/`, or `host:pid/` where its birth cannot be read; matched literally (a host name's
    `_` is no LIKE wildcard here)."""
    import os
    import socket

    from sqlalchemy import or_

    from flows.lease import new_owner

    prefixes = {f"{socket.gethostname()}:{os.getpid()}/", new_owner().rpartition("/")[0] + "/"}
    mine = or_(*(col(UpgradeRun.lease_owner).startswith(prefix, autoescape=True) for prefix in prefixes))
    known: set[int] = set()

    def runs(session: Session) -> list[int]:
        held = session.exec(select(UpgradeRun.id).where(mine)).all()
        known.update(run_id for run_id in held if run_id is not None)
        return sorted(known)

    return runs
