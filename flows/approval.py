"""The optional approval gate: the run pauses in Prefect until someone approves or refuses it.

`upkeep approve RUN` (or the Prefect UI's resume form) answers with an `Approval`. The pause keeps the
cluster claimed, so nothing else can start on it while the question is open.

`upkeep pause|cancel RUN` at the gate ends the wait within a second, without an answer: it only records
the stop (under the run's row lock, which `upkeep approve` answers under too); a watcher the wait keeps
(`_woken_by_a_stop`) reads it and wakes the pause with `stop_the_gate`. The answer `STOPPED_BY` gives is no
decision, believed only with the stop recorded; the flow honours the stop as it would between nodes.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal
from uuid import UUID

from prefect import get_run_logger
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput

from flows.plan import UpdatePlan
from flows.records import recorded, stop_requested
from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.models import AuditEvent
from inventory.runs import REFUSED, get_run, refusal

APPROVAL_STEP = "approval"  # the NodeStep (no node) open while the run waits at its gate
# The approver of the answer a pause/cancel gives the gate to wake it: not a decision, never recorded as
# one (the flow believes it only with the run's requested_action set).
STOPPED_BY = "upkeep pause/cancel"
GateAnswer = Literal["approved", "refused", "stopped"]
log = logging.getLogger(__name__)  # the watcher's thread has no Prefect run context for its logger


class Approval(RunInput):
    approved: bool
    approver: str = ""
    reason: str = ""


# Prefect sets a gate's run Paused, then saves the question's form (the input schema) in a second call:
# an answer in between is rejected "Run input schema not found". The gap is one API call (tens of ms; an
# `upkeep approve --refuse` right after the pause read as paused met it in CI): asked again every 0.1 s
# for this long, then the gate is taken as never asking (its process killed in that moment).
GATE_PATIENCE = 10.0
_NO_QUESTION = "Run input schema not found"


class GateNotAsking(RuntimeError):
    """The gate's run is Paused in Prefect but its question was never saved: its process stopped between
    the two calls (killed), or is stuck there for longer than GATE_PATIENCE."""


def answer_gate(flow_run_id: UUID, answer: dict[str, object], *, patience: float | None = None) -> None:
    """Give the gate `answer` (Prefect's resume with run input). Prefect's own errors as raised by
    `resume_flow_run` (NotPausedError, FlowPauseTimeout, RuntimeError), except an answer given before the
    question was saved: tried again until it is, GateNotAsking after `patience` (GATE_PATIENCE) seconds."""
    deadline = time.monotonic() + (GATE_PATIENCE if patience is None else patience)
    while True:
        try:
            resume_flow_run(flow_run_id, run_input=answer)
            return
        except RuntimeError as exc:
            if _NO_QUESTION not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise GateNotAsking(str(exc)) from None
        time.sleep(0.1)


def stop_the_gate(flow_run_id: UUID) -> None:
    """Wake the run's approval pause for a pause/cancel already recorded (its requested_action): Prefect's
    NotPausedError when the gate is not waiting (answered already, or not reached yet)."""
    answer_gate(flow_run_id, {"approved": False, "approver": STOPPED_BY, "reason": ""}, patience=0)


def wait_for_approval(
    runtime: Runtime, run_id: int, plan: UpdatePlan, held: Callable[[], bool] = lambda: True
) -> GateAnswer:
    """`approved` when the run may go on: no approval needed, already given, or given now; `refused`;
    `stopped` when a pause/cancel came first (asked before the gate, or while it waited): the caller
    honours it, no answer is recorded, and a resumed run asks again. `held`: whether the run is still
    this process's (its lease); woken for a stop when it is not, the gate records nothing either."""
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        if not run.needs_approval or run.approved_by:
            return "approved"
        if run.reason.startswith(REFUSED):  # refused (`upkeep approve --refuse`) while no process waited
            # here (killed at the gate; Prefect took the answer for the dead pause): it stands, as told
            return "refused"
        if run.requested_action:  # `upkeep pause|cancel` during the download or pre-flight: no question
            return "stopped"
    get_run_logger().warning(
        "run %s (%s) waits for approval: `upkeep approve %s` or resume it in the Prefect UI",
        run_id,
        plan.label,
        run_id,
    )
    # Recorded as a step of its own: while it is open the run's phase is `awaiting_approval`
    # (inventory/run_report.py), and no node counts as touched.
    with recorded(runtime.engine, run_id, None, APPROVAL_STEP) as note:
        for asked in itertools.count():
            with _woken_by_a_stop(runtime, run_id):
                answer = pause_flow_run(
                    wait_for_input=Approval,
                    timeout=int(runtime.approval_timeout),
                    poll_interval=1,
                    key=f"approval-{run_id}" + (f"-{asked}" if asked else ""),  # a pause's key fires once
                )
            if answer.approver != STOPPED_BY:
                break
            # Believed with the stop recorded; or, the run taken over meanwhile, never an answer of
            # ours (its new owner may have honoured the stop already: read here, it is gone, and the
            # wake was recorded as a refusal 'by upkeep pause/cancel' of a paused run).
            if stop := stop_requested(runtime.engine, run_id):
                note.output = f"not answered: {stop} requested while waiting"
                return "stopped"
            if not held():
                note.output = "not answered: woken for a pause/cancel; the run taken over meanwhile"
                return "stopped"
            # Ours, and no stop: not the watcher's wake but an answer typed in the Prefect UI under its
            # name. No decision (the record would say 'upkeep pause/cancel' approved or refused it): asked
            # again.
            get_run_logger().warning(
                "run %s: an answer named %r with no pause/cancel pending is no decision; asked again",
                run_id,
                STOPPED_BY,
            )
        who = answer.approver or "unknown"
        note.output = f"{'approved' if answer.approved else 'refused'} by {who}: {answer.reason}"
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        # `upkeep approve` recorded this very answer, and its decision, before it woke the gate
        # (upkeep/updates.py): one decision, not two. An answer from the Prefect UI is recorded here.
        told = run.approved_by == who if answer.approved else run.reason == refusal(who, answer.reason)
        if answer.approved:
            run.approved_by = who
            if run.reason.startswith(REFUSED):  # `upkeep approve --refuse` lost Prefect's race to this
                run.reason = ""  # approval (a UI answer): not the reason of a run that goes on
        else:
            run.reason = refusal(who, answer.reason)
            run.approved_by = ""  # an `upkeep approve` that lost Prefect's race to this refusal
        session.add(run)
        if not told:
            session.add(decision(run_id, who, approved=answer.approved, reason=answer.reason))
    return "approved" if answer.approved else "refused"


@contextmanager
def _woken_by_a_stop(runtime: Runtime, run_id: int, every: float = 1.0) -> Iterator[None]:
    """While the gate waits, wake it once a pause/cancel is recorded (`upkeep pause|cancel` only records
    it: the CLI does not call Prefect). A stop recorded before the pause began is woken once it has; a
    read or a wake that fails (the database or the API away) is tried again at the next second."""
    from prefect.exceptions import NotPausedError
    from prefect.runtime import flow_run

    if not flow_run.id:  # not under Prefect's engine (unit tests' in-process flows): nothing to wake
        yield
        return
    flow_run_id, done = UUID(flow_run.id), threading.Event()

    def watch() -> None:
        while not done.wait(every):
            try:
                if stop_requested(runtime.engine, run_id):
                    stop_the_gate(flow_run_id)
            except NotPausedError:  # not paused yet, or answered: asked again at the next second
                pass
            except Exception as exc:  # the database or the API away for a moment: asked again
                log.debug("run %s: approval stop watcher: %s", run_id, exc)

    watcher = threading.Thread(target=watch, name=f"approval-stop-{run_id}", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=10)


def decision(run_id: int, who: str, *, approved: bool, reason: str) -> AuditEvent:
    """The approval gate's answer as a decision `upkeep show` lists (inventory/run_report.py)."""
    return AuditEvent(
        actor=who,
        action="run.approved" if approved else "run.refused",
        subject=f"run/{run_id}",
        detail={"reason": reason},
    )
