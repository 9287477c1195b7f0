"""`upkeep show RUN`: one update's record as the CLI prints it (and `no_update`, the line for an id
that is none). Its own module so that both upkeep.updates and upkeep.on_worker, which call each other's
entry points, can print a run without importing one another."""

from __future__ import annotations

from rich.table import Table
from sqlalchemy.engine import Engine

from inventory.db import session_scope
from inventory.run_report import decisions, node_rows, run_row
from inventory.runs import get_run
from upkeep.console import CliError, console, print_json
from upkeep.settings import printable


def no_update(run_id: int) -> str:
    return f"no update {run_id} (see `upkeep runs`)"


def show_run(run_id: int, *, engine: Engine, as_json: bool, extra: dict[str, object] | None = None) -> None:
    """The run's record; `extra`: more fields of its JSON (a command's own word on it)."""
    from flows.links import flow_run_url

    with session_scope(engine) as session:
        try:
            run = get_run(run_id, session=session)
        except LookupError:
            raise CliError(no_update(run_id)) from None
        summary, nodes = run_row(run, session), node_rows(run, session)
        url = flow_run_url(run.flow_run_id)
        taken = decisions(run, session)
    if as_json:
        print_json({**summary, "flow_run_url": url, "nodes": nodes, "decisions": taken, **(extra or {})})
        return
    console.print(
        f"[bold]run {summary['id']}[/]: {summary['cluster']} {summary['from']}→{summary['to']} "
        f"[bold]{summary['phase']}[/]"
    )
    if summary["window_end"]:
        console.print(f"window: {summary['window_start']} to {summary['window_end']}", markup=False)
    if summary["override_reason"]:
        console.print(f"window overridden: {printable(summary['override_reason'])}", markup=False)
    table = Table("node", "before", "after", "seconds", "result")
    for row in nodes:
        table.add_row(
            row["node"],
            row["before"] or "-",
            row["after"] or "-",
            "-" if row["seconds"] is None else f"{row['seconds']:.2f}",
            row["result"],
        )
    console.print(table)
    if summary["reason"]:
        # Operator text (an approver or a reason typed in the Prefect UI's resume form is stored as typed):
        # its control characters escaped, so a terminal never acts on an ESC and a newline forges no line.
        console.print(f"reason: {printable(summary['reason'])}", markup=False)
    if url:
        console.print(f"Prefect flow run: {url}", markup=False)
    for decision in taken:
        console.print(
            f"{decision['decision']} by {printable(decision['by'])} at {decision['at'][:19]}: "
            f"{printable(decision['reason']) or '-'}",
            markup=False,
        )
    if summary["lease_owner"]:
        console.print(
            f"held by {printable(summary['lease_owner'])} until {summary['lease_until']}", markup=False
        )
