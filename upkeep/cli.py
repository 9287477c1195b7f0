"""`upkeep`: the SRE's command line. Every command refuses bad input with one clear line and exit 1."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import Engine

from upkeep.cli_cases import case_app, diagnostics_app
from upkeep.cli_release import release_app
from upkeep.console import CliError, console, err_console, print_json

app = typer.Typer(help="Upgrade and maintenance scheduler for customer clusters.", no_args_is_help=True)
inventory_app = typer.Typer(help="The system of record: customers, clusters, nodes, releases.")
app.add_typer(inventory_app, name="inventory")
app.add_typer(case_app, name="case")
app.add_typer(diagnostics_app, name="diagnostics")
app.add_typer(release_app, name="release")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


_opened: dict[str, Engine] = {}


def _engine() -> Engine:
    """The database of the settings in force, opened (and migrated) once per command; flows run by
    this command get a Runtime built from the same settings and engine."""
    if "engine" not in _opened:
        from flows import runtime as flow_runtime
        from upkeep.bootstrap import build_runtime, open_database
        from upkeep.settings import load_settings

        settings = load_settings()
        engine = _opened["engine"] = open_database(settings)
        flow_runtime.configure(lambda: build_runtime(settings, engine=engine))
    return _opened["engine"]


@inventory_app.command("import")
def inventory_import(file: Annotated[Path, typer.Argument(help="Inventory YAML file.")]) -> None:
    """Validate FILE completely, then write it; on any problem nothing is written."""
    import getpass

    from inventory.importer import import_inventory

    summary = import_inventory(file, engine=_engine(), actor=getpass.getuser())
    console.print(f"imported {file}: {summary}")


@inventory_app.command("show")
def inventory_show(json: JsonOpt = False) -> None:
    """Customers, clusters, nodes and releases."""
    from inventory.db import session_scope
    from inventory.repo import inventory_snapshot

    with session_scope(_engine()) as session:
        snap = inventory_snapshot(session=session)
    if json:
        print_json(snap)
        return
    table = Table("customer", "cluster", "kind", "ring", "version", "nodes", "access")
    for customer in snap["customers"]:
        for cluster in customer["clusters"]:
            nodes = ", ".join(f"{n['hostname']}:{n['port']}" for n in cluster["nodes"])
            table.add_row(
                customer["name"],
                cluster["name"],
                cluster["kind"],
                cluster["ring"],
                cluster["version"],
                nodes,
                cluster["access"]["type"],
            )
    console.print(table)
    releases = ", ".join(f"{r['version']} (from {', '.join(r['from']) or '-'})" for r in snap["releases"])
    console.print(f"releases: {releases or 'none'}")


@app.command()
def update(
    cluster: Annotated[str, typer.Argument(help="Cluster name, or customer/cluster.")],
    to: Annotated[str, typer.Option("--to", help="Target version, e.g. 9.10.0.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; touch nothing.")] = False,
    case: Annotated[str | None, typer.Option("--case", help="The support case this update resolves.")] = None,
    require_approval: Annotated[
        bool, typer.Option("--require-approval", help="Pause after pre-flight until `upkeep approve`.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Upgrade CLUSTER to a newer release now, node by node."""
    from upkeep.updates import print_plan, run_update

    if dry_run:
        print_plan(cluster, to, engine=_engine(), as_json=json)
        return
    run_update(cluster, to, engine=_engine(), as_json=json, case=case, require_approval=require_approval)


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
    )


RunArg = Annotated[int, typer.Argument(help="Run id (see `upkeep runs`).")]


@app.command()
def resume(run: RunArg, json: JsonOpt = False) -> None:
    """Continue a crashed or paused run where it stopped; no node is upgraded twice."""
    from upkeep.updates import resume_run

    resume_run(run, engine=_engine(), as_json=json)


@app.command()
def pause(run: RunArg) -> None:
    """Stop a run cleanly after the node in progress; `upkeep resume` continues it."""
    import getpass

    from upkeep.updates import request_stop

    console.print(request_stop(run, "pause", engine=_engine(), actor=getpass.getuser()))


@app.command()
def cancel(run: RunArg) -> None:
    """Cancel a run (a running one after the node in progress)."""
    import getpass

    from upkeep.updates import request_stop

    console.print(request_stop(run, "cancel", engine=_engine(), actor=getpass.getuser()))


@app.command()
def approve(
    run: RunArg,
    refuse: Annotated[bool, typer.Option("--refuse", help="Refuse instead of approving.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "",
) -> None:
    """Answer a run waiting at its approval gate."""
    import getpass

    from upkeep.updates import approve_run

    console.print(
        approve_run(run, engine=_engine(), approved=not refuse, reason=reason, actor=getpass.getuser())
    )


@app.command()
def runs(json: JsonOpt = False, limit: Annotated[int, typer.Option(help="How many.")] = 20) -> None:
    """Recent upgrade runs."""
    from inventory.db import session_scope
    from inventory.run_report import run_row
    from inventory.runs import list_runs

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
            row["state"],
            row["source"],
            row["created_at"][:19],
            (row["reason"] or "")[:80],
        )
    console.print(table)


@app.command()
def show(run: Annotated[int, typer.Argument(help="Run id.")], json: JsonOpt = False) -> None:
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

    _engine()
    with quiet_prefect():
        result = dispatch_flow(max_running=max_running)
    if json:
        print_json(result)
    else:
        console.print(
            f"reminders: {len(result['reminders'])}, started runs: {result['started'] or 'none'}, "
            f"notices sent: {result['notices_sent']}"
        )


@app.command()
def settings(json: JsonOpt = False) -> None:
    """The settings in force (secrets masked)."""
    from upkeep.settings import load_settings

    data = load_settings().public_dict()
    if json:
        print_json(data)
        return
    for key, value in data.items():
        console.print(f"{key} = {value}")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Leave the lab running afterwards.")] = False,
) -> None:
    """Start a lab (2 clusters x 3 nodes), import it, update one cluster, show the result."""
    from upkeep.demo import run_demo

    run_demo(keep=keep)


def _mount_lab() -> None:
    from upkeep.lab.cli import app as lab_app

    app.add_typer(lab_app, name="lab", help="A local fleet of real sshd nodes and an HTTPS file server.")


_mount_lab()


def _mount_schedule() -> None:
    from upkeep.cli_schedule import register

    register(app)


_mount_schedule()


def main() -> None:
    from upkeep.errors import explain

    try:
        # Without standalone mode Click returns typer.Exit's code instead of exiting with it.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CliError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(exc.code)
    except Exception as exc:
        message = explain(exc)
        if message is None:
            raise
        err_console.print(f"[red]error:[/] {message}", soft_wrap=True)
        sys.exit(1)
