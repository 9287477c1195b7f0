"""`upkeep lab ...`: start, inspect, break and stop the local lab fleet."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from upkeep.console import console as _out
from upkeep.console import err_console as _err
from upkeep.console import print_json
from upkeep.lab.lab import FAULTS, Lab, LabError

app = typer.Typer(
    help="A local fleet of real sshd nodes, a jump host and an HTTPS file server, for demos and tests.",
    no_args_is_help=True,
)

RootOption = Annotated[
    Path | None, typer.Option("--root", help=r"Lab state directory \[default: <UPKEEP home>/lab].")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(message: str) -> NoReturn:
    # upkeep.cli.main shows it: one line on stderr, or {"error", "exit"} with --json.
    from upkeep.console import CliError

    raise CliError(message)


def _lab(root: Path | None) -> Lab:
    if root is None:
        # Settings are read per command, never at import: `--help` must work with a broken config.
        from upkeep.settings import SettingsError, load_settings

        try:
            root = load_settings().home / "lab"
        except SettingsError as exc:
            _fail(str(exc))
    return Lab(root)


def _show(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(status)
        return
    state = "[green]up[/]" if status["up"] else "[red]down[/]"
    _out.print(f"lab {escape(status['root'])}: {state}")
    fs, jump = status.get("fileserver"), status.get("jump")
    if fs:
        _out.print(f"  file server  {fs['url']}  {_run(fs)}")
        _out.print(f"               user {fs['user']}, password in {escape(status['root'])}/lab.json (0600)")
        _out.print(f"               CA {escape(fs['ca'])}")
    if jump:
        _out.print(f"  jump host    {jump['user']}@{jump['address']}:{jump['port']}  {_run(jump)}")
    tunnel = status.get("tunnel")
    if tunnel:
        _out.print(f"  tunnel srv   {tunnel['user']}@{tunnel['address']}:{tunnel['port']}  {_run(tunnel)}")
        _out.print("               customers open it: upkeep lab tunnel NODE start")
    _out.print(f"  inventory    {escape(status['inventory'])}")
    _out.print(f"  known_hosts  {escape(status['known_hosts'])}  key {escape(status['ssh_key'])}")
    if not status["nodes"]:
        return
    table = Table("node", "cluster", "port", "version", "fault", "sshd")
    for node in status["nodes"]:
        table.add_row(
            node["hostname"],
            node["cluster"],
            str(node["port"]),
            node["version"] or "?",
            f"[yellow]{node['fault']}[/]" if node["fault"] else "",
            _run(node),
        )
    _out.print(table)


def _run(proc: dict[str, Any]) -> str:
    return f"[green]running[/] (pid {proc['pid']})" if proc["running"] else "[red]stopped[/]"


@app.command()
def up(
    clusters: Annotated[int, typer.Option(help="Number of clusters.")] = 2,
    nodes: Annotated[int, typer.Option(help="Nodes per cluster.")] = 3,
    kind: Annotated[str, typer.Option(help="Cluster kind: software or cloud.")] = "software",
    upgrade_seconds: Annotated[float, typer.Option(help="How long each node's upgrade takes.")] = 0.2,
    health_delay: Annotated[float, typer.Option(help="Seconds a node reports 'starting' after.")] = 0.2,
    initial_version: Annotated[str, typer.Option(help="Version every node starts at.")] = "9.8.0",
    access: Annotated[
        str, typer.Option(help="How the inventory reaches nodes: direct, jump or tunnel.")
    ] = "direct",
    rings: Annotated[
        str | None, typer.Option(help=r"Comma-separated ring per cluster \[default: by kind].")
    ] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start every node's sshd, the jump host and nginx; write the inventory."""
    lab = _lab(root)
    try:
        status = lab.up(
            clusters=clusters,
            nodes=nodes,
            kind=kind,
            initial_version=initial_version,
            upgrade_seconds=upgrade_seconds,
            health_delay=health_delay,
            access=access,
            rings=[r.strip() for r in rings.split(",")] if rings else None,
        )
    except LabError as exc:
        _fail(str(exc))
    _show(status, as_json)


@app.command()
def status(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Show the lab's processes (with live pids), nodes, versions and faults."""
    _show(_lab(root).status(), as_json)


@app.command()
def down(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Stop every lab process (idempotent). Node directories stay for post-mortems."""
    lab = _lab(root)
    try:
        lab.down()
    except LabError as exc:
        _fail(str(exc))
    if as_json:
        print_json({"root": str(lab.root), "up": False})
        return
    _out.print(f"lab {escape(str(lab.root))}: down")


@app.command()
def fault(
    node: Annotated[str, typer.Argument(help="Node hostname, e.g. acme-c1-n2.")],
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(FAULTS)}.")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Inject a fault into one node (or clear it)."""
    try:
        _lab(root).fault(node, kind)
    except LabError as exc:
        _fail(str(exc))
    if as_json:
        print_json({"node": node, "fault": None if kind == "clear" else kind})
        return
    _out.print(f"{escape(node)}: {'fault cleared' if kind == 'clear' else f'fault {kind}'}")


@app.command()
def tunnel(
    node: Annotated[str, typer.Argument(help="Node hostname, e.g. acme-c1-n2.")],
    action: Annotated[str, typer.Argument(help="start, status or stop.")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Be the customer on NODE: `upkeep-agent tunnel start|status|stop` there (lab up --access tunnel).
    Upkeep itself never starts a tunnel."""
    try:
        code, out = _lab(root).tunnel(node, action)
    except LabError as exc:
        _fail(str(exc))
    if as_json:
        if code != 0:
            from upkeep.console import CliError

            raise CliError(f"{node}: {out}", code)
        print_json({"node": node, "action": action, "output": out})
        return
    (_out if code == 0 else _err).print(f"{escape(node)}: {escape(out)}")
    raise SystemExit(code)


@app.command()
def env(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Print the lab's settings as `export UPKEEP_...=...` lines, secrets included (they are the lab's
    own), so another shell (a worker, a second terminal) is one `eval "$(upkeep lab env)"` away."""
    from upkeep.settings import SettingsError, load_settings

    def refuse(message: str) -> NoReturn:
        # `eval "$(upkeep lab env)"` ignores our exit status (`eval ""` succeeds, even under `set -e`):
        # what it evaluates must fail too, or the shell goes on with the default home and database.
        if not as_json:
            typer.echo("false")
        _fail(message)

    try:
        settings = load_settings()
    except SettingsError as exc:
        refuse(str(exc))
    lab = Lab(root) if root is not None else Lab(settings.home / "lab")
    try:
        overrides = lab.settings_overrides()
    except LabError as exc:
        refuse(str(exc))
    if not lab.status()["up"]:
        _err.print(  # one line, even for a root with a newline (`2>&1` must not make it a command)
            f"warning: lab {escape(' '.join(str(lab.root).split()))} is down; these are the settings of "
            "its last start",
            soft_wrap=True,
        )
    # The home (and the database, when one is set) of this shell: the other shell then shares the
    # inventory, the run records and the outbox with it.
    values: dict[str, str] = {"home": str(settings.home.resolve())}
    if settings.database_url:
        values["database_url"] = settings.database_url
    values.update({key: str(value) for key, value in overrides.items()})
    if as_json:
        print_json({f"UPKEEP_{key.upper()}": value for key, value in values.items()})
        return
    where = " ".join(str(lab.root).split())  # a comment line: no newline may end it early
    lines = [f'# the lab at {where}: eval "$(upkeep lab env)" in another shell']
    lines += [f"export UPKEEP_{key.upper()}={shlex.quote(value)}" for key, value in values.items()]
    typer.echo("\n".join(lines))
