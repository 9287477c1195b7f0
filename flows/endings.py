"""Every ending of an update told: the customer's notice that fits it and the SRE's alert, queued in
the transaction that records the ending (flows/outcomes.py calls these).

| ending                     | customer notice                         | SRE alert          |
|----------------------------|-----------------------------------------|--------------------|
| approval refused           | cancelled, with the refusal's reason    | approval-refused   |
| cancelled (mid-way or not) | cancelled, with each node's version     | run-cancelled      |
| carried over               | partial (+ rescheduled), node versions  | carried-over       |
| stalled (3 idle windows)   | stopped (slot withdrawn), node versions | stalled            |
| failed once nodes touched  | failed, with each node's version        | run-failed (#15)   |
| rollout halted             | - (its runs stay planned, re-slotted)   | rollout-halted     |

The customer hears about an ending only if they heard about the update before (a notice of it was
queued for them: scheduled, started, ...): an SRE's `upkeep update` refused at its approval gate never
touched a node and was never announced, so it stays between the SRE and Upkeep.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from flows.alerts import alert_sre
from flows.run_notices import VendorTerms, customer_knows, queue_run_notice
from flows.runtime import Runtime
from inventory.models import UpgradeRun
from inventory.run_report import node_rows, node_unfinished
from inventory.runs import paused_stopped


def versions_at_stop(run: UpgradeRun, session: Session, *, continues: bool = False) -> tuple[str, ...]:
    """'node-1: 9.10.0' per node, in upgrade order: the verified version, the old one for a node not
    reached, or that its upgrade did not complete (support checks it: a failure opens a case). In a
    carry-over (`continues`) no one checks it now: the run asks the node its state when it goes on, and
    the customer reads that, not that support is checking (adv37)."""
    lines = []
    for row in node_rows(run, session):
        if row["after"]:
            version = str(row["after"])
        elif _unfinished(row) and continues:
            version = "upgrade interrupted; its state is checked when the update continues"
        elif _unfinished(row):
            version = BEING_CHECKED
        else:
            version = f"{run.from_version} (not upgraded)"
        lines.append(f"{row['node']}: {version}")
    return tuple(lines)


BEING_CHECKED = "upgrade did not complete; our support team is checking this node"


def _unfinished(row: dict[str, Any]) -> bool:
    """Its upgrade began and did not complete: not a node whose pre-flight alone failed (a support
    tunnel closed at a window's start changed nothing on it)."""
    return node_unfinished(row)


def being_checked(run: UpgradeRun, session: Session) -> tuple[str, ...]:
    """The nodes `versions_at_stop` tells the customer our support team is checking (not in a carry-over):
    an ending that opens no case (a stall) asks the SRE to check them, or the words promise nothing."""
    return tuple(str(row["node"]) for row in node_rows(run, session) if _unfinished(row))


def mid_way(run: UpgradeRun, session: Session) -> bool:
    """Whether any node was upgraded (or failed, or interrupted) in this run: the cluster may now be mixed."""
    return any(row["after"] or node_unfinished(row) for row in node_rows(run, session))


def tell_ending(
    runtime: Runtime,
    run: UpgradeRun,
    *,
    session: Session,
    now: datetime,
    notice: str | None,
    customer_reason: str,
    alert: str,
    headline: str,
    cause: str,
    action: str = "",
) -> None:
    """The customer's `notice` (when they knew of the update) and the SRE's `alert` of an ending."""
    versions = (
        versions_at_stop(run, session, continues=alert == "carried-over") if mid_way(run, session) else ()
    )
    told = ""
    if notice is not None and customer_knows(run, session):
        if notice in ("cancelled", "stopped") and run.slot_start is not None:
            run.notice_sequence += 1  # the calendar entry is withdrawn: a new invite SEQUENCE
            session.add(run)
        extra: dict[str, Any] = {"next_slot_start": run.slot_start} if notice == "partial" else {}
        if notice == "stopped":  # the cluster's state in a count: N of M nodes run the new version
            rows = node_rows(run, session)
            extra |= {"nodes_upgraded": sum(1 for row in rows if row["after"]), "nodes_total": len(rows)}
            extra["paused_by_us"] = paused_stopped(run)  # its words: paused by us, not stalled (adv52)
        queued = queue_run_notice(
            run,
            notice,
            session=session,
            now=now,
            vendor=VendorTerms.from_runtime(runtime),
            reason=customer_reason,
            node_versions=versions,
            **extra,
        )
        told = f"The customer was sent the '{notice}' notice." if queued else "The customer has no contacts."
    elif notice is not None:
        told = "The customer was not told (the update was never announced to them)."
    assert run.id is not None
    alert_sre(
        runtime,
        kind=alert,
        headline=headline,
        cause=cause,
        run_id=run.id,
        detail="\n".join(filter(None, [*(f"  {line}" for line in versions), told])),
        action=action,
        key=f"run-{run.id}:{alert}:{run.notice_sequence}",
        session=session,
    )
