"""`upkeep`: the SRE's command line. Every command refuses bad input with one clear line and exit 1."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while the CLI is still importing (a second or more on a loaded machine): the same answer
    as later (`aborted`, exit 130; JSON with --json) instead of an import traceback. Nothing has been
    opened or written yet, so leaving at once is safe; `main` puts Python's handler back before the
    command runs (its cleanup needs KeyboardInterrupt)."""
    import json
    import os

    wants_json = "--json" in sys.argv[1 : (sys.argv.index("--") if "--" in sys.argv else None)]
    if wants_json:
        os.write(1, (json.dumps({"error": "aborted", "exit": 130}) + "\n").encode())
    else:
        os.write(2, b"error: aborted\n")
    os._exit(130)


def _catch_interrupts_while_starting() -> None:
    import contextlib
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
        # ValueError: imported by another thread than the main one (a test's), which keeps its own.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, _interrupted_while_starting)


_catch_interrupts_while_starting()

import contextlib
import importlib
from collections.abc import Callable, Iterator, MutableMapping

import click
import typer
from rich.table import Table
from typer.core import TyperGroup
from typer.main import get_group_from_info
from typer.models import Default, TyperInfo

from upkeep.cli_common import JsonOpt, close_engine
from upkeep.cli_common import open_engine as _engine
from upkeep.console import (
    STDOUT_MISSING,
    CliError,
    console,
    fit_output_to_its_encoding,
    output,
    print_json,
    report_error,
    stdout_closed,
    verbose,
    verbosity,
)
from upkeep.telemetry import switch_off as _telemetry_off

_telemetry_off()  # before any command imports Prefect

# Command groups whose module is imported only when the group is named (or a help page lists it):
# NAME -> (module, its Typer app, help when the app has none). Measured on a quiet 2-core AMD EPYC,
# CPU-s of `python -c "import ..."` (mean of 3): upkeep.cli with every group imported 0.74, typer and
# rich alone 0.12; cli_release alone 0.76 (the inventory file's pydantic schema), cli_cases 0.46,
# cli_oncall 0.49, upkeep.lab.cli 0.18. `upkeep runs` and the like no longer pay for them.
SUB_APPS: dict[str, tuple[str, str, str | None]] = {
    "case": ("upkeep.cli_cases", "case_app", None),
    "diagnostics": ("upkeep.cli_cases", "diagnostics_app", None),
    "release": ("upkeep.cli_release", "release_app", None),
    "oncall": ("upkeep.cli_oncall", "oncall_app", None),
    "tunnel": ("upkeep.cli_tunnel", "tunnel_app", None),
    "lab": ("upkeep.lab.cli", "app", "A local fleet of real sshd nodes and an HTTPS file server."),
}


class _LazyCommands(MutableMapping[str, Any]):
    """The root group's commands by name, where a SUB_APPS group is built when it is first looked up.
    Its name is known from the start, so help pages, completion and "Did you mean 'case'?" list it;
    only looking it up (running it, or a help page that lists it) imports its module."""

    def __init__(self, loaded: dict[str, Any], build: Callable[[str], Any]) -> None:
        self._loaded = loaded
        self._build = build

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded and name in SUB_APPS:
            try:
                self._loaded[name] = self._build(name)
            except Exception as exc:
                # Not a KeyError: Click looks commands up with Mapping.get, which takes any KeyError
                # (an os.environ[...] at a module's import, say) for an unknown command name.
                raise ImportError(
                    f"the `upkeep {name}` commands cannot be loaded: {type(exc).__name__}: {exc}"
                ) from exc
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in SUB_APPS

    def __iter__(self) -> Iterator[str]:
        for name in list(self._loaded):  # a lookup during the walk builds, and adds, a group
            if name not in SUB_APPS:
                yield name
            if name == "inventory":  # where Typer listed the groups when they were mounted eagerly
                yield from SUB_APPS

    def __len__(self) -> int:
        return len(self._loaded.keys() | SUB_APPS.keys())

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]


class _LazyGroup(TyperGroup):
    """The root command (Click's lazy-group pattern: Typer's `add_typer` imports every module up front)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _LazyCommands(dict(self.commands), self._build)

    def _build(self, name: str) -> Any:
        module, attr, help_text = SUB_APPS[name]
        sub_app = getattr(importlib.import_module(module), attr)
        return get_group_from_info(
            TyperInfo(sub_app, name=name, help=help_text if help_text else Default(None)),
            pretty_exceptions_short=sub_app.pretty_exceptions_short,
            rich_markup_mode=self.rich_markup_mode,
            suggest_commands=self.suggest_commands,
        )

    def invoke(self, ctx: Any) -> Any:
        """A command that wrote stdout some other way than upkeep.console (a `print`, `typer.echo`) and
        found its reader gone: that is stdout closed too (upkeep/console.py), not Click's silent exit 1.
        An EPIPE of anything else (a socket) is carried past Click, which takes every EPIPE for stdout's
        and exits 1 without a word, to `_run_command`'s answer."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            if not _stdout_reader_gone():
                raise _BrokenPipeElsewhere() from exc
            stdout_closed()
            return None


class _BrokenPipeElsewhere(Exception):
    """An EPIPE that is not stdout's reader going away (`_LazyGroup.invoke`): its cause is the error."""


app = typer.Typer(
    cls=_LazyGroup,
    help="Upgrade and maintenance scheduler for customer clusters. Exit codes: 0 ok, 1 refused or "
    "failed, 2 usage error or lost race (another process holds the run), 3 partial (tunnel status: "
    "attention).",
    no_args_is_help=True,
)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has closed it (poll(2) says POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("upkeep")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout that was never installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        if output["json"]:
            print_json({"version": _version()})
        else:
            console.print(f"upkeep {_version()}", markup=False)
        raise typer.Exit(0)


@app.callback()
def _options(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", help="Show tracebacks, Prefect's task tracebacks and its log lines."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print Upkeep's version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Options for every command."""
    verbosity["verbose"] = verbose


inventory_app = typer.Typer(help="The system of record: customers, clusters, nodes, releases.")
app.add_typer(inventory_app, name="inventory")


@inventory_app.command("import")
def inventory_import(
    file: Annotated[Path, typer.Argument(help="Inventory YAML file.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what the import would change and do; write nothing.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Validate FILE completely, then write it; on any problem nothing is written. Every planned
    update the new inventory makes invalid (window gone, blackout or holiday over its slot ...) is
    moved to its next valid slot with a notice to the customer, or held; each is listed."""
    import getpass
    from datetime import UTC, datetime

    from flows.integrity import import_and_recheck
    from flows.run_notices import VendorTerms
    from inventory.public import RecheckPublic
    from upkeep.settings import load_settings

    summary, outcomes = import_and_recheck(
        file,
        engine=_engine(),
        actor=getpass.getuser(),
        now=datetime.now(UTC),
        vendor=VendorTerms.configured(),
        dry_run=dry_run,
        role_addresses=load_settings().role_addresses(),
    )
    if json:
        print_json(
            {
                "file": str(file),
                "dry_run": dry_run,
                "summary": str(summary),
                "changes": summary.as_dict(),
                "updates": [
                    RecheckPublic(
                        update=f"update-{o.run_id}",
                        cluster=o.label,
                        action=o.action,
                        reasons=list(o.reasons),
                        slot_start=o.slot.start if o.slot else None,
                        slot_end=o.slot.end if o.slot else None,
                        state=o.state or None,
                        describe=o.describe(),
                    ).model_dump(mode="json")
                    for o in outcomes
                ],
            }
        )
        return
    from inventory.importer_yaml import shown_name

    head = "dry run, nothing written" if dry_run else "imported"
    console.print(f"{head} {shown_name(file)}: {summary}", markup=False)
    for outcome in outcomes:
        console.print(outcome.describe(), markup=False, soft_wrap=True)


@inventory_app.command("schema")
def inventory_schema(
    json: Annotated[
        bool, typer.Option("--json", help="Accepted for uniformity: the output is JSON.")
    ] = False,
) -> None:
    """Print the inventory file's JSON Schema, for editors to validate and complete inventory YAML
    (e.g. `upkeep inventory schema > inventory.schema.json`; yaml-language-server reads a
    `# yaml-language-server: $schema=inventory.schema.json` first line)."""
    import json as json_module

    from inventory.importer_model import json_schema
    from upkeep.console import write_stdout

    write_stdout(json_module.dumps(json_schema(), indent=2) + "\n")


@inventory_app.command("show")
def inventory_show(json: JsonOpt = False) -> None:
    """Customers, clusters, nodes and releases."""
    from inventory.db import session_scope
    from inventory.importer_db import inventory_snapshot

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
def settings(json: JsonOpt = False) -> None:
    """The settings in force (secrets masked)."""
    from upkeep.settings import load_settings, printable

    data = load_settings().public_dict()
    if json:
        print_json(data)
        return
    for key, value in data.items():
        # One whole line a setting, control characters escaped: a limit name's ESC sequences or RTL
        # override reached the terminal raw, a contact's newline split its line (adv46).
        console.print(f"{key} = {printable(str(value))}", markup=False, soft_wrap=True)


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Leave the lab running afterwards.")] = False,
) -> None:
    """Start a lab (2 clusters x 3 nodes), import it, update one cluster, show the result."""
    from upkeep.demo import run_demo

    run_demo(keep=keep)


def _mount_commands() -> None:
    from upkeep import cli_ops, cli_portal, cli_runs, cli_schedule

    cli_portal.register(app)
    cli_runs.register(app)
    cli_schedule.register(app)
    cli_ops.register(app)


_mount_commands()


# Typer (0.29 here) carries its own copy of Click: its usage errors (missing argument, unknown option, a
# run id that is not a number) are not `click` exceptions, and without these they escaped as tracebacks.
_EXITS: tuple[type[Any], ...] = tuple({click.exceptions.Exit, typer.Exit})
_ABORTS: tuple[type[Any], ...] = tuple({click.exceptions.Abort, typer.Abort})
# KeyboardInterrupt: Ctrl-C while Typer builds the commands, before Click's own handling.
_INTERRUPTS: tuple[type[BaseException], ...] = (*_ABORTS, KeyboardInterrupt)
_USAGE_ERRORS: tuple[type[Any], ...] = tuple(
    {click.ClickException, getattr(typer, "TyperException", click.ClickException)}
)


def _wants_json(args: list[str]) -> bool:
    """`--json` on the command line (before a `--`): errors are then JSON too, usage errors included."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _root_options(args: list[str]) -> list[str]:
    """The options given before the command's name: the root's own (--verbose, --version, --help)."""
    options = []
    for arg in args:
        if arg == "--" or not arg.startswith("-"):
            break
        options.append(arg)
    return options


def main() -> None:
    import signal

    # per call: main may run again (tests)
    output.update(
        json=_wants_json(sys.argv[1:]),
        printed=False,
        stdout_closed=False,
        stdout_failed=False,
        stdout_missing=False,
    )
    fit_output_to_its_encoding()
    # Before Click parses: a command group is imported while Click resolves its name, before the root
    # callback has read --verbose, and its import error must show the traceback that option promises.
    verbosity["verbose"] = "--verbose" in _root_options(sys.argv[1:])
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        with contextlib.suppress(ValueError):  # only the main thread may; the CLI's always is
            signal.signal(signal.SIGINT, signal.default_int_handler)
    succeeded = False
    try:
        _run_command()
    except SystemExit as exc:
        succeeded = exc.code in (0, None)
        lost = output["stdout_failed"] or (output["stdout_missing"] and STDOUT_MISSING)
        if succeeded and lost:  # `> /dev/full`, `>&-`: the answer went nowhere (upkeep.console)
            succeeded = False
            report_error(str(lost), 1)
            raise SystemExit(1) from None
        raise
    finally:
        # The command has answered: its answer and exit code stand, also when Ctrl-C comes now.
        with contextlib.suppress(Exception, KeyboardInterrupt):
            close_engine()
        if succeeded and output["stdout_closed"]:
            _end_as_a_closed_pipe_ends()


def _end_as_a_closed_pipe_ends() -> None:
    """Die of SIGPIPE, as git and coreutils do when their reader goes away (upkeep/console.py): the
    command's work is done, its database closed. Python ignores SIGPIPE: put the default back, then
    send it to this thread (pthread_kill: delivered before the call returns, whatever other threads)."""
    import os
    import signal
    import threading

    for stream in (sys.stdout, sys.stderr):  # stdout is /dev/null by now
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.pthread_kill(threading.get_ident(), signal.SIGPIPE)
    os._exit(128 + signal.SIGPIPE)  # pragma: no cover - SIGPIPE blocked by whoever started us


def _run_command() -> None:
    from upkeep.errors import explain

    try:
        # Without standalone mode Click returns typer.Exit's code instead of exiting with it.
        code = app(standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C into a silent Exit(130); no command exits 130 itself
            report_error("aborted", 130)
        sys.exit(code if isinstance(code, int) else 0)
    except _EXITS as exc:
        sys.exit(exc.exit_code)
    except _INTERRUPTS:
        report_error("aborted", 130)
        sys.exit(130)
    except _USAGE_ERRORS as exc:
        if output["json"]:
            report_error(exc.format_message(), exc.exit_code)
        else:
            exc.show()  # "Usage: ..." and the problem; exit 2 for usage errors
        sys.exit(exc.exit_code)
    except CliError as exc:
        report_error(str(exc), exc.code)
        sys.exit(exc.code)
    except Exception as caught:
        error = caught.__cause__ if isinstance(caught, _BrokenPipeElsewhere) and caught.__cause__ else caught
        message = explain(error)
        if message is None:
            if verbose():
                raise
            # Never a traceback for the user: one line, and how to get the details.
            what = " ".join(str(error).split())[:500] or "(no message)"
            message = (
                f"unexpected {type(error).__name__}: {what} (this is a bug in Upkeep; run the command again "
                "with `upkeep --verbose ...` for the traceback and report it)"
            )
        report_error(message, 1)
        sys.exit(1)
