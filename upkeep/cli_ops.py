"""Operator commands: `upkeep doctor` (is this machine ready?), `upkeep db upgrade` (migrate),
`upkeep deploy` and `upkeep live on|off` (Upkeep's deployments and schedules on the Prefect server)."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from upkeep.cli_common import JsonOpt
from upkeep.console import CliError, console, print_json

db_app = typer.Typer(help="Upkeep's own database (its schema; the data is the inventory's).")

live_app = typer.Typer(
    help="Upkeep's schedules on the Prefect server (dispatcher, case auto-close, monthly release): "
    "on or off, recorded in the variable upkeep_schedules_active so later deploys keep them so.",
    no_args_is_help=True,
)

CONNECT_TIMEOUT = 10  # seconds: `db upgrade` against a database host that does not answer

_MARK = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]", "skip": "[dim]skip[/]"}


def doctor(
    nodes: Annotated[
        bool, typer.Option("--nodes", help="Also log into every node of the inventory.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Is this machine ready? Settings, database, Prefect, file server, SSH, SMTP, alerts.

    One line per check, with what to do when it fails. Exit 0 when none failed (warnings allowed),
    1 otherwise. Writes nothing, sends nothing."""
    from upkeep.doctor import Check, run_checks

    def show(check: Check) -> None:
        fix = f" [bold]->[/] {escape(check.fix)}" if check.fix and check.status != "ok" else ""
        console.print(
            f"{_MARK[check.status]}  {escape(check.name)}: {escape(check.detail)}{fix}", soft_wrap=True
        )

    checks = run_checks(nodes=nodes, on_check=None if json else show)
    failed = [c.name for c in checks if c.status == "fail"]
    if json:
        print_json({"ok": not failed, "failed": failed, "checks": [c.as_dict() for c in checks]})
    else:
        counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail", "skip")}
        verdict = "[red]not ready[/]" if failed else "[green]ready[/]"
        console.print(
            f"{verdict}: {counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed, "
            f"{counts['skip']} skipped"
        )
    if failed:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(json: JsonOpt = False) -> None:
    """Create the schema or migrate it to this checkout's newest revision (every command and every
    flow run also does this on start; run it once after creating the database)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from inventory.db import make_engine, migrate
    from inventory.revision import current_revisions, head_revisions
    from upkeep.settings import SettingsError, load_settings, mask_url

    def refuse(message: str) -> NoReturn:
        raise CliError(message)  # {"error", "exit"} with --json: upkeep.cli.main

    try:
        settings = load_settings()
    except SettingsError as exc:
        refuse(str(exc))
    url = settings.resolved_database_url()
    shown = mask_url(url)  # never the password, nor the whole of a URL that does not parse
    where = settings.database_named()
    try:
        driver = make_url(url).drivername
    except Exception:  # its message may quote a piece of the URL
        refuse(
            f"{where} is not a database URL "
            "(postgresql+psycopg://USER:PASSWORD@HOST/DB, or empty for SQLite in the home dir)"
        )
    if not driver.startswith(("sqlite", "postgresql")):
        refuse(f"{where}: only sqlite and postgresql are supported")
    try:
        # libpq waits for an answer for ever unless told: a half-dead database host must not hang
        # the shell (the migration itself may wait for another one, which is a wait worth having).
        is_pg = driver.startswith("postgresql")
        extra: dict[str, Any] = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}} if is_pg else {}
        engine = make_engine(url, **extra)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
    except DBAPIError as exc:
        cause = " ".join(str(exc.orig or exc).split())
        refuse(f"{shown}: cannot migrate: {cause}")
    except OSError as exc:  # SQLite: the database's directory cannot be created
        refuse(f"{shown}: {exc}")
    try:
        current, heads = current_revisions(engine), head_revisions()
    finally:
        engine.dispose()
    if current != heads:  # pragma: no cover - migrate() raises first
        refuse(f"{shown}: schema at {sorted(current)} after migrating, expected {sorted(heads)}")
    if json:
        print_json({"database": shown, "revision": sorted(current)})
    else:
        console.print(f"{escape(shown)}: schema at head ({', '.join(sorted(current))})", soft_wrap=True)


def deploy(json: JsonOpt = False) -> None:
    """Deploy prefect.yaml to the Prefect server (PREFECT_API_URL), keeping the schedules as the server
    records them (upkeep_schedules_active): live stays live, paused stays paused.

    Refuses, deploying nothing, when PREFECT_API_URL is unset or does not answer, or when the variable is
    not JSON true/false or disagrees with the dispatch schedule (the deploy would switch every schedule).
    On a server without Upkeep it creates the work pool and the variable (false) first: deployed paused,
    until `upkeep live on`. Exit 1 when the dispatch schedule does not match the variable afterwards."""
    from upkeep.deploy import deploy as run

    _answer(run(), json)


@live_app.command("on")
def live_on(json: JsonOpt = False) -> None:
    """Go live: set upkeep_schedules_active to true, then resume every schedule of Upkeep's deployments
    (and a deployment paused with the UI's toggle). Idempotent."""
    from upkeep.deploy import switch

    _answer(switch(True), json)


@live_app.command("off")
def live_off(json: JsonOpt = False) -> None:
    """Stop every schedule of Upkeep's deployments, then set upkeep_schedules_active to false, so later
    deploys keep them off. Runs already started go on (see `upkeep pause` for those). Idempotent."""
    from upkeep.deploy import switch

    _answer(switch(False), json)


def _answer(outcome: Any, json: bool) -> None:
    """The command's answer, the doctor's `deployments` line after it, and exit 1 with its problem."""
    if json:
        print_json(outcome.data)
    else:
        line = outcome.line
        console.print(escape(outcome.said), soft_wrap=True)
        console.print(f"{_MARK[line.status]}  {escape(line.name)}: {escape(line.detail)}", soft_wrap=True)
    if outcome.problem:
        raise CliError(outcome.problem)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.add_typer(db_app, name="db")
    app.command()(deploy)
    app.add_typer(live_app, name="live")
