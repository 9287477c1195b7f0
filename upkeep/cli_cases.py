"""`upkeep case ...` and `upkeep diagnostics collect`: support cases and their diagnostics bundles.

Exit codes: 0 done; 1 refused or failed (one clear line, nothing half done); 2 usage error (Click);
3 `diagnostics collect` uploaded a PARTIAL bundle (some nodes missing; the message names them).
"""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlmodel import Session

from upkeep.cli_common import JsonOpt, parse_cli_time
from upkeep.console import CliError, console, err_console, print_json

EXIT_PARTIAL = 3

case_app = typer.Typer(help="Support cases: open, show, list, escalate, close.", no_args_is_help=True)
diagnostics_app = typer.Typer(help="Diagnostics bundles from a cluster's nodes.", no_args_is_help=True)


CaseArg = Annotated[str, typer.Argument(help="Case id, e.g. CASE-12 or SUP-4711.")]


def _engine() -> Engine:
    from upkeep.cli_common import open_engine  # also wires flows' Runtime to the same settings

    return open_engine()


def _now() -> datetime:
    from inventory.types import utcnow

    return utcnow()


def case_dict(case: Any, session: Session) -> dict[str, Any]:
    from flows.failed_run_case import case_links
    from inventory.case_tables import CaseNotePublic, CasePublic, CaseRunPublic, DiagnosticsBundlePublic
    from inventory.cases import case_bundles, case_clusters
    from inventory.models import Customer

    customer = session.get(Customer, case.customer_id)
    # The rows are printed as stored: CasePublic and DiagnosticsBundlePublic share their tables' bases and
    # so the limits Upkeep's writes keep (subject 1-200 characters, ...), which a row written by hand, by
    # another version or on SQLite (no VARCHAR lengths) may exceed - validating it again refused to show
    # the case at all. The links and notes are not table rows and are validated.
    links = case_links(case.ref, session=session)  # runs whose failure it is about (Prefect links), notes
    public = CasePublic.model_construct(
        **case.model_dump(exclude={"id", "customer_id", "ref"}),
        id=case.ref,
        customer=customer.name if customer else case.customer_id,
        clusters=[c.name for c in case_clusters(case, session=session)],
        bundles=[
            DiagnosticsBundlePublic.model_construct(**bundle.model_dump(exclude={"case_id"}))
            for bundle in case_bundles(case, session=session)
        ],
        runs=[CaseRunPublic.model_validate(run) for run in links["runs"]],
        notes=[CaseNotePublic.model_validate(note) for note in links["notes"]],
    )
    return public.model_dump(mode="json")


def _show(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    console.print(
        f"[bold]{escape(data['id'])}[/] {escape(data['subject'])}  [{data['priority']}, {data['status']}]"
    )
    for key in ("customer", "clusters", "category", "queue", "opened_at", "first_response_due"):
        value = ", ".join(data[key]) if isinstance(data[key], list) else data[key]
        console.print(f"  {key:<19} {value}", markup=False)
    if data["escalated_at"]:
        console.print(
            f"  escalated           by {data['escalated_by']} at {data['escalated_at']}: "
            f"{data['escalation_reason']}",
            markup=False,
        )
    if data["status"] == "escalated":
        console.print(
            f"  held by             {data['escalation_manager'] or '-'} (Escalation Manager)", markup=False
        )
        console.print(f"  next update due     {data['next_update_due'] or '-'}", markup=False)
    if data["status"] == "waiting_on_customer":
        console.print(
            f"  waiting since       {data['waiting_since']}, {data['contact_attempts']} contact attempts"
        )
    if data["closed_at"]:
        console.print(f"  closed              {data['closed_at']}: {data['close_reason']}", markup=False)
    for bundle in data["bundles"]:
        state = "PARTIAL, missing " + ", ".join(bundle["missing_nodes"]) if bundle["partial"] else "complete"
        console.print(
            f"  bundle              {bundle['url']} ({bundle['size']} bytes, {state})", markup=False
        )
    for run in data.get("runs", []):
        link = f" - {run['flow_run_url']}" if run["flow_run_url"] else ""
        console.print(f"  run                 {run['run']} (upkeep show {run['run']}){link}", markup=False)
    for note in data.get("notes", []):
        console.print(f"  note                {note['at'][:16]} {note['by']}: {note['note']}", markup=False)


def _change(ref: str, as_json: bool, change: Any) -> None:
    """Load the case, apply `change(case, session)`, commit, show it."""
    from inventory.cases import get_case
    from inventory.db import session_scope

    with session_scope(_engine()) as session:
        case = get_case(ref, session=session)
        change(case, session)
        data = case_dict(case, session)
    _show(data, as_json)


@case_app.command("open")
def case_open(
    subject: Annotated[str, typer.Option("--subject", help="What it is about.")],
    cluster: Annotated[
        list[str] | None, typer.Option("--cluster", help="Cluster concerned (repeatable).")
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Default: the clusters' owner.")] = None,
    category: Annotated[str, typer.Option("--category", help="Issue or 'Feature Request'.")] = "Issue",
    priority: Annotated[
        str, typer.Option("--priority", help="P0-P3, severity 1-4 or Urgent/High/...")
    ] = "P2",
    external_id: Annotated[
        str | None, typer.Option("--id", help="Keep an external id, e.g. SUP-4711.")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Open a case; its first response is due by the priority's SLA."""
    from sqlmodel import select

    from inventory import repo
    from inventory.cases import open_case
    from inventory.db import session_scope
    from inventory.models import Customer

    if not cluster and not customer:
        raise CliError("name the customer (--customer) or at least one cluster (--cluster)")
    with session_scope(_engine()) as session:
        clusters = [repo.get_cluster(name, session=session) for name in cluster or []]
        owners = {repo.customer_of(c, session=session).name for c in clusters}
        if customer is None:
            if len(owners) > 1:
                raise CliError(f"the clusters belong to different customers: {', '.join(sorted(owners))}")
            customer = owners.pop()
        found = session.exec(select(Customer).where(Customer.name == customer)).first()
        if found is None:
            raise CliError(f"no customer {customer!r} (see `upkeep inventory show`)")
        case = open_case(
            customer=found,
            clusters=clusters,
            subject=subject,
            category=category,
            priority=priority,
            now=_now(),
            opened_by=getpass.getuser(),
            external_id=external_id,
            session=session,
        )
        data = case_dict(case, session)
        outcomes = _recheck(case, session, "case opened")
    _show(data, json)
    _say(outcomes, json)


def _recheck(case: Any, session: Any, why: str) -> list[Any]:
    """A P0/P1 case opened or closed changes which updates may run on its clusters: re-check them
    (an update blocked by the case is held; one held by it is re-slotted once it closes)."""
    from sqlmodel import select

    from flows.integrity import recheck_planned
    from flows.run_notices import VendorTerms
    from inventory.case_tables import CaseCluster

    if str(case.priority) not in ("P0", "P1"):
        return []
    clusters = session.exec(select(CaseCluster.cluster_id).where(CaseCluster.case_id == case.id)).all()
    return recheck_planned(
        now=_now(),
        session=session,
        actor=getpass.getuser(),
        vendor=VendorTerms.configured(),
        clusters=list(clusters),
        why=f"{why}: {case.ref}",
    )


def _say(outcomes: list[Any], as_json: bool) -> None:
    for outcome in [] if as_json else outcomes:
        console.print(outcome.describe(), markup=False, soft_wrap=True)


@case_app.command("show")
def case_show(case: CaseArg, json: JsonOpt = False) -> None:
    """One case: SLA, escalation, clusters and diagnostics bundles."""
    _change(case, json, lambda _case, _session: None)


@case_app.command("list")
def case_list(
    all_: Annotated[bool, typer.Option("--all", help="Include closed cases.")] = False, json: JsonOpt = False
) -> None:
    """Cases, newest first (open ones unless --all)."""
    from inventory.cases import list_cases
    from inventory.db import session_scope

    with session_scope(_engine()) as session:
        rows = [case_dict(c, session) for c in list_cases(session=session, include_closed=all_)]
    if json:
        print_json(rows)
        return
    table = Table("case", "customer", "clusters", "priority", "status", "first response due", "subject")
    for row in rows:
        cells = [row["id"], row["customer"], ", ".join(row["clusters"]), row["priority"], row["status"],
                 row["first_response_due"][:16], row["subject"][:60]]  # fmt: skip
        table.add_row(*(escape(str(cell)) for cell in cells))
    console.print(table)


@case_app.command("escalate")
def case_escalate(
    case: CaseArg,
    by: Annotated[str, typer.Option("--by", help="customer or sre.")],
    reason: Annotated[str, typer.Option("--reason", help="Why.")],
    json: JsonOpt = False,
) -> None:
    """Escalate a case (by the customer or by SRE), with a reason: the Escalation Manager (SRE Manager)
    holds it, is notified and named to the customer; its updates follow the cadence of its priority."""
    from flows.escalation import escalate_case
    from flows.runtime import current

    who = getpass.getuser()
    _engine()
    runtime = current()
    _change(
        case,
        json,
        lambda c, s: escalate_case(runtime, c, by=by, reason=reason, now=_now(), actor=who, session=s),
    )


@case_app.command("auto-close")
def case_auto_close(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the cases it would close; change nothing.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Close the cases that waited on the customer too long (14 days after at least 2 contact attempts)
    and email the customer, as the daily deployment does; --dry-run only lists them."""
    from inventory.cases import auto_close_candidates
    from inventory.db import session_scope

    engine = _engine()
    if dry_run:
        with session_scope(engine) as session:
            refs = [case.ref for case in auto_close_candidates(_now(), session=session)]
    else:
        from flows.case_auto_close import case_auto_close as auto_close_flow
        from upkeep.bootstrap import quiet_prefect
        from upkeep.updates import prefect_answers

        prefect_answers()  # one line naming the API (or temporary server) that does not answer
        with quiet_prefect():
            refs = auto_close_flow(now=_now())
    if json:
        print_json({"dry_run": dry_run, "closed" if not dry_run else "would_close": refs})
        return
    verb = "would close" if dry_run else "closed"
    console.print(f"{verb} {len(refs)} case(s){': ' + ', '.join(refs) if refs else ''}", markup=False)


@case_app.command("update")
def case_update(
    case: CaseArg,
    note: Annotated[
        str, typer.Option("--note", help="What was shared with the stakeholders (required).")
    ] = "",
    json: JsonOpt = False,
) -> None:
    """Record that an escalated case's stakeholders got an update; the next is due a cadence later."""
    from inventory.cases import share_update

    who = getpass.getuser()
    _change(case, json, lambda c, s: share_update(c, note=note, now=_now(), actor=who, session=s))


@case_app.command("close")
def case_close(
    case: CaseArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded and shown).")] = "",
    json: JsonOpt = False,
) -> None:
    """Close a case, with a reason."""
    from inventory.cases import close_case

    who = getpass.getuser()
    outcomes: list[Any] = []

    def close(c: Any, s: Any) -> None:
        close_case(c, reason=reason, now=_now(), actor=who, session=s)
        s.flush()
        outcomes.extend(_recheck(c, s, "case closed"))

    _change(case, json, close)
    _say(outcomes, json)


@case_app.command("status")
def case_status(
    case: CaseArg,
    status: Annotated[str, typer.Argument(help="new, open or 'waiting on customer'.")],
    json: JsonOpt = False,
) -> None:
    """Set a case's status; 'waiting on customer' starts the auto-close clock."""
    from inventory.cases import set_status

    who = getpass.getuser()
    _change(case, json, lambda c, s: set_status(c, status, now=_now(), actor=who, session=s))


@case_app.command("contact")
def case_contact(
    case: CaseArg, note: Annotated[str, typer.Option("--note", help="How.")] = "", json: JsonOpt = False
) -> None:
    """Record an attempt to reach the customer about a case waiting on them."""
    from inventory.cases import record_contact_attempt

    who = getpass.getuser()
    _change(case, json, lambda c, s: record_contact_attempt(c, now=_now(), actor=who, note=note, session=s))


@diagnostics_app.command("collect")
def diagnostics_collect(
    cluster: Annotated[str, typer.Option("--cluster", help="Cluster name, or customer/cluster.")],
    case: Annotated[str, typer.Option("--case", help="Case the bundle is for.")],
    since: Annotated[str | None, typer.Option("--since", help=r"ISO time \[default: until - 24 h].")] = None,
    until: Annotated[str | None, typer.Option("--until", help=r"ISO time \[default: now].")] = None,
    nodes: Annotated[str | None, typer.Option("--nodes", help="Only these nodes: n1,n2.")] = None,
    json: JsonOpt = False,
) -> None:
    """Collect the cluster's logs, redact secrets, upload a bundle for CASE. Exit 3: partial bundle."""
    import prefect

    from flows import runtime as flow_runtime
    from flows.diagnostics import collect_diagnostics, resolve_request
    from upkeep.bootstrap import build_runtime, quiet_prefect
    from upkeep.database import open_database
    from upkeep.progress import EventBoard, watch
    from upkeep.settings import load_settings

    settings = load_settings()
    engine = open_database(settings)
    wanted = [n.strip() for n in nodes.split(",") if n.strip()] if nodes else None
    start, end = parse_cli_time(since, "--since"), parse_cli_time(until, "--until")
    # Everything is checked here, before Prefect starts or any node is connected to.
    req = resolve_request(cluster, case, start, end, wanted, now=_now(), engine=engine, run_id=None)
    # As `update` does: a Prefect API that does not answer (or a temporary server too slow to start)
    # is one line naming it, not an "unexpected RuntimeError ... this is a bug".
    from upkeep.updates import prefect_answers

    prefect_answers()
    runtime = build_runtime(settings, engine=engine)
    board = EventBoard(req.case)  # a row per node: collect, redact; then the bundle's pack and upload
    runtime.progress = board.event
    flow_runtime.configure(runtime)
    with (
        quiet_prefect(),
        prefect.tags(f"customer:{req.customer}", f"cluster:{req.cluster}", f"case:{req.case}"),
        watch(board, console=console, enabled=not json),
    ):
        state = collect_diagnostics(
            cluster=req.cluster,
            case=req.case,
            since=req.since,
            until=req.until,
            nodes=wanted,
            return_state=True,
        )
    result = state.result()  # re-raises the flow's error: shown as one line by upkeep.cli.main
    if result.reached_no_node:
        raise CliError(result.no_node_reason())  # exit 1: nothing to bundle, nothing uploaded
    if json:
        from inventory.public import DiagnosticsResultPublic

        print_json(DiagnosticsResultPublic.model_validate(result).model_dump(mode="json"))
    else:
        console.print(f"bundle for {result.case}: {result.url}", markup=False)
        console.print(f"  sha256 {result.sha256}, {result.size} bytes, nodes {', '.join(result.nodes)}")
        fired = {k: v for k, v in result.redactions.items() if v}
        console.print(f"  redactions: {fired or 'none'}", markup=False)
    if result.partial:
        missing = "; ".join(f"{host}: {why}" for host, why in result.missing.items())
        err_console.print(
            f"[yellow]PARTIAL bundle[/]: {len(result.missing)} of {len(result.nodes)} nodes missing - "
            f"{escape(missing)}. The bundle was uploaded and its manifest names them.",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_PARTIAL)
