"""What people watching a run in the Prefect UI see: progress per node, then a summary with the node table.

All of it is best effort. Our database is the record of a run; these are copies for the UI, written
through the Prefect API. When that API is unreachable (after the client's own retries), the UI misses
an update and a warning says so; the run carries on. Raising instead once failed a run whose node had
just been upgraded: customer told "could not be completed", a P1 case opened, and `upkeep resume`
refusing the failed run (tests/faults/test_prefect_api.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.logging import get_logger
from sqlmodel import col, select

from flows.plan import UpdatePlan
from flows.records import stopped_at
from flows.runtime import Runtime
from inventory.case_tables import Case, DiagnosticsBundle
from inventory.db import session_scope
from inventory.run_report import node_rows, run_row
from inventory.runs import get_run

T = TypeVar("T")
log = get_logger("upkeep.report")


def best_effort(what: str, call: Callable[[], T]) -> T | None:
    """`call()`, or None with a warning when it fails: for writes that only the UI reads."""
    try:
        return call()
    except Exception as exc:
        log.warning("Prefect UI: %s not written (%s: %s); the run goes on", what, type(exc).__name__, exc)
        return None


class Progress:
    """A progress artifact moved on after every node; its description lists how each node ended, so
    the per-node log lines need not go to the API as well (one call per node instead of two).

    Created at the first node that ends, not at the run's start: a bar at 0 % told nothing the task
    runs (download, pre-flight, distribute) do not, and cost a request and an event per cluster
    (issue #19). Not created then (the API away), it is tried again at the next node."""

    def __init__(self, plan: UpdatePlan) -> None:
        self._total = len(plan.nodes)
        self._label = f"Nodes of {plan.label}"
        self._ended: list[str] = []
        self._id: UUID | None = None

    def update(self, done: int, node: str = "", outcome: str = "") -> None:
        if node:
            self._ended.append(f"- {node}: {outcome}")
        description = "\n".join([self._label, "", *self._ended])
        progress = 100.0 * done / self._total
        artifact_id = self._id
        if artifact_id is None:
            created = best_effort(
                f"progress {done}/{self._total}",
                lambda: create_progress_artifact(progress=progress, description=description),
            )
            self._id = created if isinstance(created, UUID) else None
            return
        best_effort(
            f"progress {done}/{self._total}",
            lambda: update_progress_artifact(artifact_id, progress=progress, description=description),
        )


NODE_COLUMNS = ("node", "before", "after", "seconds", "result")
_KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")
HEADLINES = {
    "succeeded": "succeeded",
    "failed": "FAILED",
    "cancelled": "cancelled",
    "paused": "paused",
    "stalled": "stalled",  # paused by the bound on idle carry-overs, not by a person (run_phase)
    "carried over": "carried over to the next window",
    "held": "held",
    "taken over": "taken over by another process",
}


def summary_key(customer: str, cluster: str) -> str:
    """The artifact key of a cluster's summaries, `update-<customer>-<cluster>`: the Artifacts page
    keeps each cluster's history under it (keys allow lowercase letters, digits and dashes)."""
    return _KEY_UNSAFE.sub("-", f"update-{customer}-{cluster}".lower()).strip("-")[:200]


def one_line(cause: str, limit: int = 300) -> str:
    """A cause as the one line the Prefect run header shows."""
    line = " ".join(cause.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def shell_word(word: str) -> str:
    """`word` as one shell word an operator can copy from a terminal line: shlex.quote's when it is all
    printable; else bash's $'...' with every unprintable character written as its UTF-8 bytes, `\\xHH`
    each (shlex.quote left an ESC or a newline as it is: a Prefect limit named with one wrote a control
    sequence onto the SRE's terminal or split the one line; adv43). Bytes, not Python's escapes (adv46):
    bash reads `\\x85` as the one byte 0x85, not U+0085's UTF-8, and `\\u202e` only in a UTF-8 locale.
    An undecodable byte of the setting (os.environ's surrogate escape) is written as that byte."""
    import shlex

    if word.isprintable():
        return shlex.quote(word)

    def escaped(ch: str) -> str:
        if ch in "\\'":
            return "\\" + ch
        if ch.isprintable():
            return ch
        try:
            data = ch.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate no environment decoded: no name Prefect holds
            data = ch.encode("utf-8", "surrogatepass")
        return "".join(f"\\x{byte:02x}" for byte in data)

    return "$'" + "".join(map(escaped, word)) + "'"


def summary_artifacts(runtime: Runtime, plan: UpdatePlan, run_id: int, outcome: str = "") -> None:
    """One markdown artifact for every outcome: what happened and why, where it stopped, how to
    inspect it in Upkeep, then the node table with the nodes not reached (one API call)."""
    try:
        lines = _summary_lines(runtime, plan, run_id, outcome)
    except Exception as exc:  # our database away: the run's own handling says so; the UI misses this
        log.warning("Prefect UI: summary not written (%s: %s)", type(exc).__name__, exc)
        return
    best_effort(
        "summary",
        lambda: create_markdown_artifact(
            key=summary_key(plan.customer, plan.cluster),
            markdown="\n".join(lines),
            description=f"{lines[0].removeprefix('# Update ')} (Upkeep run {run_id})",
        ),
    )


def _summary_lines(runtime: Runtime, plan: UpdatePlan, run_id: int, outcome: str) -> list[str]:
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        summary, nodes = run_row(run, session), node_rows(run, session)
        held_reason = str(getattr(run, "held_reason", "") or "")
        bundle = session.exec(
            select(DiagnosticsBundle)
            .where(DiagnosticsBundle.run_id == run_id)
            .order_by(col(DiagnosticsBundle.id).desc())
        ).first()
        case = session.get(Case, bundle.case_id) if bundle is not None else None
        case_ref = case.ref if case is not None else run.case_ref or ""
    outcome = outcome or summary["state"]
    if outcome == "paused" and summary["phase"] == "stalled":  # nobody paused it: the Cause says why
        outcome = "stalled"
    node, step = stopped_at(runtime.engine, run_id)
    ended = outcome not in ("running", "planned")
    for row in nodes:
        if ended and row["result"] in ("untouched", "in progress"):
            row["result"] = "not reached"
    done = sum(1 for n in nodes if n["result"] in ("upgraded", "already at target"))
    lines = [
        f"# Update {plan.label}: {HEADLINES.get(outcome, outcome)}",
        "",
    ]
    cause = summary["reason"] or (held_reason if outcome == "held" else "")
    if cause:
        lines += [f"**Cause:** {markdown_text(one_line(cause, 1000))}", ""]
    if step:
        where = f"node `{node}`, step `{step}`" if node else f"step `{step}`, before any node was touched"
        lines += [f"**Stopped at:** {where}", ""]
    lines += [
        f"- Upkeep run: **{run_id}** ({summary['state']}); inspect with `upkeep show {run_id}`",
        f"- requested by {summary['requested_by']} via {summary['source']}",
        f"- package: `{plan.package}` (sha256 `{plan.sha256[:16]}…`)",
    ]
    if case_ref:
        lines.append(f"- case: {case_ref}")
    if bundle is not None:
        lines.append(f"- diagnostics: {bundle.url}")
    not_reached = sum(1 for n in nodes if n["result"] == "not reached")
    lines += [
        f"- nodes: {len(nodes)}, upgraded: {sum(1 for n in nodes if n['result'] == 'upgraded')}, "
        f"done: {done}, not reached: {not_reached}",
        "",
        *markdown_table(nodes, NODE_COLUMNS),
    ]
    return lines


_MARKDOWN_LIVE = frozenset("\\`*_[]()!|~")
_HTML_LIVE = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def markdown_text(text: str) -> str:
    """`text` as the Markdown that shows it as it is: a cause holds operator text (the approver and
    reason typed in the Prefect UI's resume form), whose links, images, emphasis and raw HTML the UI
    would otherwise render."""
    return "".join(_HTML_LIVE.get(c) or ("\\" + c if c in _MARKDOWN_LIVE else c) for c in text)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows),
    ]


def held_summaries(runtime: Runtime, run_ids: Sequence[int]) -> None:
    """The summary of updates the dispatcher held (no valid slot): under each cluster's key too."""
    from flows.plan import plan_update
    from inventory.models import Cluster

    for run_id in run_ids:
        try:
            with session_scope(runtime.engine) as session:
                run = get_run(run_id, session=session)
                cluster = session.get(Cluster, run.cluster_id)
                assert cluster is not None
                plan = plan_update(cluster.name, run.to_version, session=session)
        except Exception as exc:  # the UI misses this one; the record and the SRE alert have it
            log.warning("Prefect UI: held summary of run %s not written (%s)", run_id, exc)
            continue
        summary_artifacts(runtime, plan, run_id, "held")
