"""`upkeep schedule|defer|reschedule|cancel-update|calendar` and `upkeep notices send`: updates
announced for a maintenance window with advance notice, and the outbox that tells customers.

Every change and its customer notice are written in one transaction; a refusal (no slot, deferral over
the limit, malformed date) is one line on stderr, exit 1, and nothing written.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from upkeep.cli_common import JsonOpt
from upkeep.console import CliError, console, print_json

if TYPE_CHECKING:
    from sqlmodel import Session

notices_app = typer.Typer(help="Customer notices waiting in the outbox.", no_args_is_help=True)


UpdateArg = Annotated[str, typer.Argument(help="The update: update-42, or the run id 42.")]


def register(app: typer.Typer) -> None:
    """Add the scheduling commands to the main `upkeep` app."""
    app.command("schedule")(schedule)
    app.command("defer")(defer)
    app.command("reschedule")(reschedule)
    app.command("cancel-update")(cancel_update)
    app.command("calendar")(calendar)
    app.add_typer(notices_app, name="notices")


@contextmanager
def _transaction() -> Iterator[Session]:
    """One transaction on the CLI's database; the expected refusals become one-line CliErrors."""
    from flows.plan import PlanError
    from inventory.cases import CaseError
    from inventory.db import session_scope
    from inventory.runs import ActiveRunExists
    from scheduling.errors import SchedulingError
    from upkeep.cli_common import open_engine as _engine

    try:
        with session_scope(_engine()) as session:
            yield session
    except (SchedulingError, PlanError, LookupError, ActiveRunExists, CaseError) as exc:
        raise CliError(str(exc)) from None


def _now() -> datetime:
    return datetime.now(UTC)


def schedule(
    cluster: Annotated[str, typer.Argument(help="Cluster name, or customer/cluster.")],
    to: Annotated[str, typer.Option("--to", help="Target version, e.g. 9.10.0.")],
    urgent: Annotated[bool, typer.Option("--urgent", help="Security/data-loss fix: 24 h notice.")] = False,
    case: Annotated[str | None, typer.Option("--case", help="The support case this update resolves.")] = None,
    json: JsonOpt = False,
) -> None:
    """Announce an update of CLUSTER for its first allowed maintenance window and queue the notice."""
    from flows.schedule import schedule_update

    with _transaction() as session:
        run = schedule_update(
            cluster, to, now=_now(), urgent=urgent, case=case, requested_by=getpass.getuser(), session=session
        )
        data = _update_dict(run, session)
    _print_update("scheduled", data, json, _fleet_brake())


def defer(
    update: UpdateArg,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="ISO date (the first window on or after it, in the customer's zone) or date-time "
            "(no offset: the customer's local time).",
        ),
    ],
    json: JsonOpt = False,
) -> None:
    """Move a scheduled update to the first maintenance window at or after DATE (deferral limits apply)."""
    from flows.schedule import defer_update, parse_update_ref

    with _transaction() as session:
        run_id = parse_update_ref(update)
        when = _when(to, _customer_zone(run_id, session))
        run = defer_update(run_id, to=when, now=_now(), session=session, requested_by=getpass.getuser())
        data = _update_dict(run, session)
    _print_update("deferred", data, json, _fleet_brake())


def reschedule(
    update: UpdateArg,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The new start: ISO date-time (no offset: the customer's local time), inside a "
            "maintenance window with room for the update.",
        ),
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (required; told to the customer).")] = "",
    json: JsonOpt = False,
) -> None:
    """Move a planned update earlier or later (SRE): the new slot must be valid, with full notice from now
    when earlier; the customer gets a rescheduled notice, or the update announced ('scheduled') when they
    never heard of it. Not a customer deferral."""
    from flows.run_notices import move_notice
    from flows.schedule import parse_update_ref, reschedule_update
    from inventory.runs import get_run

    with _transaction() as session:
        run_id = parse_update_ref(update)
        when = _when(to, _customer_zone(run_id, session))
        previous = _previous_start(run_id, session)
        # What the customer heard before the move, read in its transaction (the move takes the row only if
        # nothing moved it since: `_hold_planned`): a 'scheduled' anew says why it is not 'rescheduled'.
        before = move_notice(get_run(run_id, session=session), session)
        run = reschedule_update(
            run_id, to=when, reason=reason, now=_now(), session=session, requested_by=getpass.getuser()
        )
        data = _update_dict(run, session) | {"previous_slot_start": previous, "reason": reason}
    _print_update("rescheduled", data, json, _fleet_brake(), told=_told_of_move(data["notice"], before))


def _told_of_move(notice: dict[str, Any] | None, before: Any) -> str:
    """What `upkeep reschedule`'s headline says the customer gets: "rescheduled" alone read as "the
    customer is told of a move" over a notice queued as 'scheduled' anew (h-ending). `before`: the notice
    `move_notice` chose before the move (None: never announced)."""
    if notice is None:
        return "the customer not told (no contacts to tell)"
    if notice["kind"] == "rescheduled":
        return "the customer told ('rescheduled')"
    why = "every notice of it was refused" if before is not None else "the update was never announced to them"
    return f"announced to the customer ('{notice['kind']}': {why}, so this is their first word of it)"


def cancel_update(
    update: UpdateArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (required; told to the customer).")] = "",
    json: JsonOpt = False,
) -> None:
    """Cancel a scheduled update; the customer's calendar entry is withdrawn."""
    from flows.schedule import cancel_update as cancel
    from flows.schedule import parse_update_ref

    with _transaction() as session:
        run_id = parse_update_ref(update)
        if not reason.strip():
            from inventory.runs import get_run

            get_run(run_id, session=session)  # an unknown update is named first
            raise CliError("cancel-update needs --reason TEXT (it is recorded and told to the customer)")
        run = cancel(run_id, now=_now(), reason=reason, session=session)
        data = _update_dict(run, session)
    _print_update("cancelled", data, json)


def calendar(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    weeks: Annotated[int, typer.Option("--weeks", help="How far ahead (1-52).")] = 4,
    now: Annotated[
        str | None, typer.Option("--now", hidden=True, help="Pretend it is this ISO time (previews, tests).")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Windows, scheduled updates, notices due, blackouts and DST changes in the weeks ahead."""
    from flows.schedule_calendar import calendar_view

    start = _now() if now is None else _when(now, "UTC", what="--now")
    with _transaction() as session:
        rows = calendar_view(now=start, weeks=weeks, customer=customer, session=session)
    if json:
        from inventory.public import CalendarEntryPublic

        print_json([CalendarEntryPublic.model_validate(row).model_dump(mode="json") for row in rows])
        return
    if not rows:
        console.print(f"nothing in the {weeks} week(s) from {start:%Y-%m-%d %H:%M} UTC", markup=False)
        return
    table = Table("local", "UTC", "where", "what", "detail")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for row in rows:
        where = "/".join(filter(None, (row.customer or "(vendor)", row.cluster)))
        what = f"[bold]{row.what}[/]" if row.what in ("dst", "update") else row.what
        same_day = row.local[4:14] == row.at.strftime("%Y-%m-%d")
        utc = row.at.strftime("%H:%M" if same_day else "%m-%d %H:%M")
        table.add_row(row.local, utc, escape(where), what, escape(row.detail))
    console.print(table)
    for row in rows:  # unwrapped, whatever the terminal's width: these move "02:00 local" against UTC
        if row.what == "dst":
            console.print(f"{row.customer}: {row.local}: {row.detail}", markup=False, soft_wrap=True)


@notices_app.command("list")
def notices_list(
    update: Annotated[
        str | None, typer.Option("--update", help="Only this update (update-42 or 42).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="The newest this many.", min=1, max=10_000)] = 50,
    json: JsonOpt = False,
) -> None:
    """Notices in the outbox, newest first, with their state: pending, sent, failed, or superseded (a
    later notice of the same update was queued before this one went out, so it was never sent)."""
    from sqlmodel import col, select

    from flows.schedule import parse_update_ref, update_ref
    from inventory.outbox import Notice
    from inventory.public import NoticePublic

    with _transaction() as session:
        query = select(Notice).order_by(col(Notice.id).desc()).limit(limit)
        if update is not None:
            query = query.where(Notice.update_ref == update_ref(parse_update_ref(update)))
        rows = [NoticePublic.model_validate(n).model_dump(mode="json") for n in session.exec(query)]
    if json:
        print_json(rows)
        return
    if not rows:
        console.print("no notices", markup=False)
        return
    table = Table("id", "update", "kind", "#", "state", "to", "queued (UTC)", "note")
    for row in rows:
        cells = [str(row[key]) for key in ("id", "update", "kind", "sequence", "state")]
        recipients, queued = row["recipients"], str(row["queued_at"])
        assert isinstance(recipients, list)
        table.add_row(*cells, ", ".join(recipients), queued[:16].replace("T", " "), str(row["note"]))
    console.print(table)


@notices_app.command("send")
def notices_send(
    limit: Annotated[int, typer.Option("--limit", help="At most this many.", min=1, max=10_000)] = 100,
    json: JsonOpt = False,
) -> None:
    """Deliver the notices that are due, through the configured mailer (SMTP or .eml files)."""
    from flows.notify import deliver_pending
    from flows.runtime import current
    from upkeep.cli_common import open_engine as _engine
    from upkeep.settings import printable

    _engine()  # configures the runtime from the settings in force
    runtime = current()
    report = deliver_pending(
        runtime.engine, runtime.mailer, now=_now(), sender=runtime.mail_from, limit=limit
    )
    if json:
        from inventory.public import DeliveryPublic

        print_json(DeliveryPublic.model_validate(report).model_dump(mode="json"))
    else:
        console.print(
            f"notices: {len(report.sent)} sent, {len(report.retrying)} retrying later, "
            f"{len(report.failed)} refused"
            + (f", {len(report.superseded)} superseded" if report.superseded else "")
            + (f", {len(report.unknown)} delivery unknown" if report.unknown else ""),
            markup=False,
        )
        # The errors quote the remote server's answers: printed inert, markup off and control characters
        # escaped (a refusal's ESC sequences reached the terminal, its [tags] were rendered: adv58).
        for failure in report.failed:
            console.print(
                printable(
                    f"refused for good: {failure.key} to {', '.join(failure.recipients)}: {failure.error}"
                ),
                markup=False,
            )
        for unknown in report.unknown:
            console.print(
                printable(
                    f"delivery unknown (not sent again): {unknown.key} to {', '.join(unknown.recipients)}: "
                    f"{unknown.error}"
                ),
                markup=False,
            )
    if report.transport_error:
        raise CliError(f"mail server unusable: {printable(report.transport_error)}")
    if report.unknown:
        raise CliError(f"{len(report.unknown)} notice(s) of unknown delivery; see above")
    if report.failed:
        raise CliError(f"{len(report.failed)} notice(s) refused for good; see above")


# --- helpers ------------------------------------------------------------------------------------------


def _customer_zone(run_id: int, session: Session) -> str:
    from inventory import repo
    from inventory.models import Cluster
    from inventory.runs import get_run

    cluster = session.get(Cluster, get_run(run_id, session=session).cluster_id)
    assert cluster is not None
    return repo.customer_of(cluster, session=session).timezone


def _previous_start(run_id: int, session: Session) -> str | None:
    from inventory.runs import get_run

    start = get_run(run_id, session=session).slot_start
    return start.isoformat() if start else None


def _when(text: str, zone: str, *, what: str = "--to") -> datetime:
    """An ISO date (midnight in `zone`) or date-time (without an offset: wall time in `zone`)."""
    from inventory.importer_model import DATE_RANGE, in_date_range
    from scheduling.times import load_zone, resolve_local

    value = text.strip()
    try:
        if len(value) == 10:
            moment = resolve_local(date.fromisoformat(value), time(0), load_zone(zone))
        else:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = resolve_local(moment.date(), moment.time(), load_zone(zone))
    except ValueError:
        raise CliError(
            f"{what} {text!r} is not an ISO date or date-time (e.g. 2026-12-01 or 2026-12-01T02:00)"
        ) from None
    except OverflowError:  # a zone shift past year 1 or 9999
        raise CliError(f"{what} {text!r} is {DATE_RANGE}") from None
    if not in_date_range(moment):
        raise CliError(f"{what} {text!r} is {DATE_RANGE}")
    return moment


def _update_dict(run: Any, session: Session) -> dict[str, Any]:
    from sqlmodel import select

    from flows.schedule import update_ref
    from inventory import repo
    from inventory.models import Cluster
    from inventory.outbox import Notice
    from inventory.public import ScheduledUpdatePublic
    from inventory.run_report import schedule_fields

    cluster = session.get(Cluster, run.cluster_id)
    assert cluster is not None
    customer = repo.customer_of(cluster, session=session)
    ref = update_ref(run.id)
    notice = session.exec(
        select(Notice).where(Notice.update_ref == ref, Notice.sequence == run.notice_sequence)
    )
    queued = notice.first()
    public = ScheduledUpdatePublic.model_validate(
        {
            "id": run.id,
            "update": ref,
            "run": run.id,
            "customer": customer.name,
            "cluster": cluster.name,
            "timezone": customer.timezone,
            "from": run.from_version,
            "to": run.to_version,
            "state": str(run.state),
            "urgent": run.urgent,
            "case": run.case_ref,
            "slot_start": run.slot_start,
            "slot_end": run.slot_end,
            "notice": queued,
        }
    )
    return public.model_dump(mode="json", by_alias=True) | schedule_fields(run, cluster, session)


def _fleet_brake() -> dict[str, object] | None:
    """The fleet's brake as `upkeep request` reads and warns of it (upkeep/updates.py `fleet_brake`,
    `warn_unchecked`), after the commit: a planned update's start is held while UPKEEP_CLUSTER_LIMIT's
    limit grants no slot, and "scheduled" alone was read as "it starts in its slot"."""
    from flows.runtime import current
    from upkeep.updates import fleet_brake, warn_unchecked

    brake = fleet_brake(current().cluster_limit)
    warn_unchecked(brake)
    return brake


def _print_update(
    action: str,
    data: dict[str, Any],
    as_json: bool,
    brake: dict[str, object] | None = None,
    *,
    told: str = "",
) -> None:
    """The update's lines (or JSON); with `brake` (`_fleet_brake`), the held fleet said as `upkeep request`
    says it, and --json's `cluster_limit` as its."""
    from templates import format_duration, format_slot

    if as_json:
        print_json(data if action == "cancelled" else {**data, "cluster_limit": brake})
        return

    def say(text: str) -> None:
        console.print(text, markup=False, soft_wrap=True)

    told = f", {told}" if told else ""  # which notice the customer gets, when the action does not say it
    say(f"{action} {data['update']}{told}: {data['customer']}/{data['cluster']} {data['from']}→{data['to']}")
    if data["slot_start"]:
        start, end = (datetime.fromisoformat(data[key]) for key in ("slot_start", "slot_end"))
        was = "was " if action == "cancelled" else ""
        say(f"  slot    {was}{format_slot(start, data['timezone'])}, {format_duration(end - start)}")
    if data["urgent"]:
        say("  urgent  24 h minimum notice")
    notice = data["notice"]
    if notice:
        say(f"  notice  {notice['kind']} #{notice['sequence']} queued for {', '.join(notice['recipients'])}")
        say("          (sent by `upkeep notices send` or the dispatcher)")
    else:
        say("  notice  none (the update had no announced slot)")
    if brake is not None and brake["held"]:
        say(f"  fleet   {brake['detail']}")
