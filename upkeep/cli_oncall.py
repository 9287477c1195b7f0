"""`upkeep oncall show|ack`: who is on call (now or at a time) and acknowledging a page."""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Annotated

import typer
from sqlmodel import col, select

from upkeep.cli_common import MAX_ID, JsonOpt, open_engine
from upkeep.console import CliError, console, print_json

if TYPE_CHECKING:
    from flows.runtime import Runtime

oncall_app = typer.Typer(help="On-call rotation (inventory `oncall:`), pages and their escalation.")


def _runtime() -> Runtime:
    from flows.runtime import current

    open_engine()  # wires flows' Runtime to the settings in force
    return current()


@oncall_app.command("show")
def oncall_show(
    at: Annotated[
        str | None, typer.Option("--at", help="ISO 8601 time with a zone, e.g. 2026-12-07T08:30:00+01:00.")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Who is on call (now, or at --at), the team lead, the escalation chain, and open pages."""
    from flows.oncall import who
    from inventory.alerts import Page
    from inventory.db import session_scope
    from inventory.public import OnCallPublic
    from inventory.types import utcnow
    from upkeep.cli_common import parse_cli_time

    runtime = _runtime()
    when = parse_cli_time(at, "--at") or utcnow()
    found = who(runtime, when)
    if found is None:
        raise CliError("no on-call rotation: add an `oncall:` section to the inventory and import it")
    with session_scope(runtime.engine) as session:
        pages = session.exec(select(Page).where(col(Page.acked_at).is_(None)).order_by(col(Page.id))).all()
        chain = found.rotation
        public = OnCallPublic.model_validate(
            {
                "at": found.at,
                "on_call": found.engineer,
                "shift": {"start": found.shift_start, "end": found.shift_end},
                "handover": f"{chain.handover:%H:%M} {chain.timezone} ({chain.rotation})",
                "team_lead": chain.team_lead,
                "escalation": chain.escalation,
                "informed": chain.informed,
                "open_pages": pages,
            }
        )
    data = public.model_dump(mode="json")
    if json:
        print_json(data)
        return
    on = data["on_call"]
    console.print(f"on call at {data['at']}: {on['name']} <{on['email']}>", markup=False)
    shift = data["shift"]
    line = f"  shift     {shift['start']} .. {shift['end']} (hand-over {data['handover']})"
    console.print(line, markup=False)
    console.print(f"  team lead {data['team_lead']['name']} <{data['team_lead']['email']}>", markup=False)
    for level, person in enumerate(data["escalation"], 1):
        console.print(
            f"  level {level}   {person['name']} ({person['role']}) <{person['email']}>", markup=False
        )
    for person in data["informed"]:
        console.print(f"  informed  {person['name']} ({person['role']}) <{person['email']}>", markup=False)
    for page in data["open_pages"]:
        console.print(
            f"  page {page['id']}: level {page['level']}, paged {', '.join(page['paged'])}, "
            f"escalates {page['escalate_at'] or 'no further'}: {page['reason'][:100]}",
            markup=False,
        )


@oncall_app.command("ack")
def oncall_ack(
    alert: Annotated[
        int, typer.Argument(help="The page's id (in the page and in `oncall show`).", min=1, max=MAX_ID)
    ],
    json: JsonOpt = False,
) -> None:
    """Acknowledge a page: its escalation stops (audited)."""
    from flows.oncall import OnCallError, ack

    try:
        row = ack(_runtime(), alert, actor=getpass.getuser())
    except OnCallError as exc:
        raise CliError(str(exc)) from None
    if json:
        from inventory.public import PageAckPublic

        print_json(PageAckPublic(page=alert, acked_by=row.acked_by, level=row.level).model_dump(mode="json"))
        return
    console.print(
        f"page {alert} acknowledged by {row.acked_by} at level {row.level}; escalation stopped", markup=False
    )
