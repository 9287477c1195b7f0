"""CLI commands for update runs: request, update now, watch and control them, dispatch due ones."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from upkeep.cli_common import JsonOpt, UpdateIdArg, operator_name
from upkeep.cli_common import open_engine as _engine
from upkeep.console import CliError, console, print_json

app = typer.Typer()


@app.command()
def update(
    cluster: Annotated[str, typer.Argument(help="Cluster name, or customer/cluster.")],
    to: Annotated[str, typer.Option("--to", help="Target version, e.g. 9.10.0.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; contact nothing, touch nothing.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Run the real pre-flight (file server has the package; every node reachable, healthy, "
            "at the expected version, with disk) and touch nothing: no run recorded, nothing sent. "
            "Exit 1 if any check fails.",
        ),
    ] = False,
    case: Annotated[str | None, typer.Option("--case", help="The support case this update resolves.")] = None,
    require_approval: Annotated[
        bool, typer.Option("--require-approval", help="Pause after pre-flight until `upkeep approve`.")
    ] = False,
    on_worker: OnWorkerOpt = None,
    watch: WatchOpt = False,
    json: JsonOpt = False,
) -> None:
    """Upgrade CLUSTER to a newer release now, node by node."""
    from upkeep.updates import check_update, print_plan, run_update

    if dry_run and check:
        raise CliError("--dry-run and --check do not go together (--check contacts the nodes)")
    if check:
        check_update(cluster, to, engine=_engine(), as_json=json)
        return
    if dry_run:
        print_plan(cluster, to, engine=_engine(), as_json=json)
        return
    run_update(
        cluster,
        to,
        engine=_engine(),
        as_json=json,
        case=case,
        require_approval=require_approval,
        on_worker=_where(on_worker, watch),
        watch=watch,
    )


@app.command()
def request(
    cluster: Annotated[str, typer.Argument(help="Cluster name, or customer/cluster.")],
    to: Annotated[str, typer.Option("--to", help="Target version, e.g. 9.10.0.")],
    source: Annotated[str, typer.Option("--source", help="customer (they asked) or support (we recommend).")],
    case: Annotated[
        str | None, typer.Option("--case", help="The case it resolves (required for support).")
    ] = None,
    urgent: Annotated[
        bool, typer.Option("--urgent", help="Security fix or fix for an open P0/P1 case.")
    ] = False,
    now: Annotated[bool, typer.Option("--now", help="Run now, inside an open maintenance window.")] = False,
    override_window: Annotated[
        bool, typer.Option("--override-window", help="With --now: run outside the window (audited).")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why the window is overridden.")] = "",
    on_worker: OnWorkerOpt = None,
    watch: WatchOpt = False,
    json: JsonOpt = False,
) -> None:
    """Request an update: scheduled into the customer's window with advance notice, or --now."""
    from upkeep.requests import request_update

    if override_window and not now:
        raise CliError("--override-window only goes with --now")
    request_update(
        cluster,
        to,
        source=source,
        case=case,
        urgent=urgent,
        now_run=now,
        override_reason=reason if override_window else None,
        engine=_engine(),
        as_json=json,
        on_worker=_where(on_worker, watch) if now else False,
        watch=watch,
    )


RunArg = UpdateIdArg
OnWorkerOpt = Annotated[
    bool | None,
    typer.Option(
        "--on-worker/--here",
        help="Hand the run to a Prefect worker (the product-update deployment) after this command's "
        r"checks, or carry it out here \[default: the on_worker setting, UPKEEP_ON_WORKER].",
        show_default=False,
    ),
]
WatchOpt = Annotated[
    bool, typer.Option("--watch", help="With --on-worker: follow the run on the worker until it ends.")
]


def _where(on_worker: bool | None, watch: bool) -> bool:
    """Whether the run goes to a worker: the option, else the setting; --watch needs a worker."""
    if on_worker is None:
        from upkeep.settings import load_settings

        on_worker = load_settings().on_worker
    if watch and not on_worker:
        raise CliError("--watch goes with --on-worker (a run carried out here always shows its progress)")
    return on_worker


@app.command()
def resume(
    run: RunArg,
    override_window: Annotated[
        bool, typer.Option("--override-window", help="Resume outside a maintenance window (audited).")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why the window is overridden.")] = "",
    on_worker: OnWorkerOpt = None,
    watch: WatchOpt = False,
    json: JsonOpt = False,
) -> None:
    """Continue a crashed, paused or carried-over run where it stopped; no node is upgraded twice.

    A run with a window resumes only inside one (else the next slot is named); a stalled one (paused
    after windows with no node upgraded) is then planned for that slot, the customer told."""
    from upkeep.updates import resume_run

    if reason and not override_window:
        raise CliError("--reason goes with --override-window here")
    resume_run(
        run,
        engine=_engine(),
        as_json=json,
        override_reason=reason if override_window else None,
        on_worker=_where(on_worker, watch),
        watch=watch,
    )


def _answer(run_id: int, action: str, message: str, as_json: bool) -> None:
    """What pause, cancel and approve did: the line, or with --json the update's state after it."""
    if not as_json:
        console.print(message, markup=False)
        return
    from inventory.db import session_scope
    from inventory.public import RunActionPublic
    from inventory.runs import get_run

    with session_scope(_engine()) as session:
        run = get_run(run_id, session=session)
        answer = RunActionPublic(
            id=run_id,
            update=f"update-{run_id}",
            action=action,
            state=str(run.state),
            requested_action=run.requested_action,
            message=message,
        )
    print_json(answer.model_dump(mode="json"))


@app.command()
def pause(run: RunArg, json: JsonOpt = False) -> None:
    """Stop a run cleanly after the node in progress; `upkeep resume` continues it."""
    from upkeep.updates import request_stop

    _answer(run, "pause", request_stop(run, "pause", engine=_engine(), actor=operator_name()), json)


@app.command()
def cancel(
    run: RunArg,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (required; recorded, told to the customer).")
    ] = "",
    json: JsonOpt = False,
) -> None:
    """Cancel an update, with a reason: a scheduled one is withdrawn from the customer's calendar (as
    `cancel-update` does), a running one stops after the node in progress (at once while it waits for
    a cluster slot or at its approval gate, if its process lives: a killed one's at the dispatcher's
    take-over), a paused one at once."""
    from upkeep.updates import request_stop, scheduled

    actor = operator_name()  # a bad name refused before anything is written, on either path
    if scheduled(run, engine=_engine()):
        from upkeep.cli_schedule import cancel_update

        cancel_update(str(run), reason=reason, json=json)
        return
    message = request_stop(run, "cancel", engine=_engine(), actor=actor, reason=reason)
    _answer(run, "cancel", message, json)


@app.command()
def approve(
    run: RunArg,
    refuse: Annotated[bool, typer.Option("--refuse", help="Refuse instead of approving.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded and shown).")] = "",
    json: JsonOpt = False,
) -> None:
    """Answer a run waiting at its approval gate, with a reason; recorded under the name you run as
    ($LOGNAME or $USER)."""
    from upkeep.updates import approve_run

    message = approve_run(run, engine=_engine(), approved=not refuse, reason=reason, actor=operator_name())
    _answer(run, "refuse" if refuse else "approve", message, json)


@app.command()
def runs(
    json: JsonOpt = False, limit: Annotated[int, typer.Option(help="How many.", min=1, max=10_000)] = 20
) -> None:
    """Recent upgrade runs."""
    from inventory.db import session_scope
    from inventory.run_report import run_row
    from inventory.runs import list_runs
    from upkeep.settings import printable

    with session_scope(_engine()) as session:
        rows = [run_row(run, session) for run in list_runs(session=session, limit=limit)]
    if json:
        print_json(rows)
        return
    table = Table("run", "cluster", "from", "to", "state", "source", "created", "reason")
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["cluster"]),
            row["from"],
            row["to"],
            row["phase"],
            row["source"],
            row["created_at"][:19],
            printable(row["reason"] or "")[:80],  # as `upkeep show`: operator text, escaped
        )
    console.print(table)


@app.command()
def show(run: RunArg, json: JsonOpt = False) -> None:
    """One run: its state and every node's result."""
    from upkeep.updates import show_run

    show_run(run, engine=_engine(), as_json=json)


@app.command()
def dispatch(
    max_running: Annotated[int, typer.Option(help="Runs allowed at once.")] = 10,
    json: JsonOpt = False,
) -> None:
    """One dispatcher tick here and now: reminders (with pre-flight), due runs, notice delivery.

    Deployments run the same flow every minute on a worker; this is for a single machine or cron."""
    from flows.dispatch import dispatch as dispatch_flow
    from upkeep.bootstrap import quiet_prefect
    from upkeep.progress import StepPoller, runs_held_by_this_process, watch
    from upkeep.updates import prefect_answers

    engine = _engine()  # a database it cannot use first: no temporary Prefect server started for nothing
    prefect_answers()  # one line naming the API (or temporary server) that does not answer
    progress = watch(StepPoller(engine, runs_held_by_this_process()), console=console, enabled=not json)
    with quiet_prefect(), progress:
        result = dispatch_flow(max_running=max_running)
    if json:
        print_json(result)
    else:
        console.print(
            f"reminders: {len(result['reminders'])}, started runs: {result['started'] or 'none'}, "
            f"taken over: {result['taken_over'] or 'none'}, notices sent: {result['notices_sent']}"
        )


def register(main_app: typer.Typer) -> None:
    main_app.registered_commands.extend(app.registered_commands)
