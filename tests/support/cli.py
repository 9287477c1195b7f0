"""The real `upkeep` entry point (`upkeep.cli.main`) run in this process, as `python -m upkeep` would
run it in a child process with environment `env` and working directory `cwd`: the same stdout, stderr
and exit code (tests/integration/test_cli_in_process.py compares the two on every kind of answer).

Why: a child process pays for a new interpreter and its imports: ~244 `python -m upkeep` children cost
~450 CPU-s of a `make test` run on two busy cores (1.3-3.9 CPU-s each; process accounting, 2026-12-05),
and a command that only reads and writes the database spends most of its 1.3-2 s starting. In this
process such a call costs what the command does (~0.05-0.3 s).

What stays a child process, by the test's choice: signals and kill -9, exit codes under them, two
commands at once, import-time faults, log lines on stderr, and every command that runs a Prefect flow or
reaches the Prefect API (`update`, `resume`, `dispatch`, `release`, ...): Prefect's settings are made
from `env` here, but a flow or an API client would use this process's Prefect client, server and
logging. A call that starts a flow or a client here fails loudly (`FlowInProcess`) rather than do so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner

_one_at_a_time = threading.Lock()


# -- a home of its own: the CLI with nothing but UPKEEP_HOME ---------------------------------------------
def home_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with no UPKEEP_ variable but UPKEEP_HOME, and plain (uncoloured,
    80-column, the default when piped) output whatever the terminal running the tests."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPKEEP_")}
    for key in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES"):
        env.pop(key, None)
    env["UPKEEP_HOME"] = str(home)
    env["PREFECT_HOME"] = str(home.parent / "prefect")  # keep the user's ~/.prefect out of it
    return {**env, **extra}


def upkeep(home: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`python -m upkeep ARGS...` in a child process, in `home`'s parent directory (forked: stdin
    /dev/null, not a terminal the tests run in, whose width Rich would take)."""
    from tests.support import forkserver

    return forkserver.run(args, env=home_env(home, **extra_env), cwd=home.parent, timeout=120)


def upkeep_here(home: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`upkeep` as above, in this process (see the module's docstring for when to choose which)."""
    return upkeep_in_process(*args, env=home_env(home, **extra_env), cwd=home.parent)


def database(home: Path) -> tuple[bytes, bytes]:
    """The SQLite database byte for byte: its file, and the write-ahead log's frames not yet copied into
    it (none when there is no log). The -shm index is not content: a process may leave one behind."""
    wal = home / "upkeep.db-wal"
    return (home / "upkeep.db").read_bytes(), wal.read_bytes() if wal.exists() else b""


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


# -- in this process ------------------------------------------------------------------------------------


class FlowInProcess(BaseException):
    """A command driven in this process got as far as starting a Prefect flow or a Prefect API client:
    run it in a child."""


class NotInProcess(BaseException):
    """`env` asks for what only a new interpreter does as it starts (an output encoding other than UTF-8,
    a PYTHONUTF8 it refuses): run the command in a child process."""


def _child_writes_utf8(env: dict[str, str]) -> bool:
    """Whether `python -m upkeep` with `env` starts and writes UTF-8 (PEP 538/540; False when unsure)."""
    import codecs

    encoding = env.get("PYTHONIOENCODING", "").partition(":")[0]
    if encoding:
        try:
            return codecs.lookup(encoding).name == "utf-8"
        except LookupError:
            return False
    mode = env.get("PYTHONUTF8", "")
    if mode not in ("", "0", "1"):
        return False  # "Fatal Python error: ... invalid PYTHONUTF8"
    if mode == "1":
        return True
    name = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "C"
    if name in ("C", "POSIX"):
        coerced = not env.get("LC_ALL") and env.get("PYTHONCOERCECLOCALE", "") != "0"
        return mode != "0" or coerced
    return "utf-8" in name.lower() or "utf8" in name.lower()


def upkeep_in_process(
    *args: str, env: dict[str, str], cwd: Path | None = None, input: str | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`upkeep ARGS...` with exactly `env` as its environment (nothing of this process's own) and
    `cwd` as its working directory; returns what `subprocess.run(..., capture_output=True,
    text=True, check=check)` of `python -m upkeep ARGS...` returns. One call at a time per process."""
    if not _child_writes_utf8(env):
        raise NotInProcess(f"run `upkeep {' '.join(args)}` in a child process: its output encoding is env's")
    with _one_at_a_time, _as_a_new_process(env, cwd):
        code, stdout, stderr = call_main(args, as_module=True, input=input, consoles_from=env)
    done = subprocess.CompletedProcess(["upkeep", *args], code, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def call_main(
    args: Sequence[str],
    *,
    as_module: bool,
    input: str | None = None,
    consoles_from: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """`upkeep.cli.main` on `args` with stdin `input` and stdout/stderr captured: its exit code and
    output. `as_module`: as `python -m upkeep` starts (Click names the program in usage lines from
    sys.argv[0] and `__main__`'s package), else as the `upkeep` console script. `consoles_from`: the
    consoles are made anew as a process with that environment makes them."""
    import upkeep
    from upkeep.cli import main

    with CliRunner().isolation(input=input) as (out, err, _both):
        if consoles_from is not None:
            # Rich decides colour from the streams it writes to when a console is made: these, never
            # this process's own (a terminal under `pytest -s`).
            from upkeep import console

            _fresh_consoles(console, consoles_from)
        first = str(Path(upkeep.__file__).with_name("__main__.py")) if as_module else "upkeep"
        argv, sys.argv = sys.argv, [first, *args]
        main_module = sys.modules["__main__"]
        package = main_module.__dict__.get("__package__")
        if as_module:
            main_module.__package__ = "upkeep"
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = argv
            main_module.__package__ = package
        return code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")


@contextlib.contextmanager
def _as_a_new_process(env: dict[str, str], cwd: Path | None) -> Iterator[None]:
    """The process-wide state a new `upkeep` process would start from: the environment, the working
    directory, the CLI's engine, the flows' Runtime and Prefect's settings. This process's own are put
    back after, with its consoles and the CLI's per-call flags (`call_main` makes the call's consoles,
    `main` sets its flags)."""
    import typer.main

    from flows import runtime as flow_runtime
    from upkeep import cli, cli_common, console

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_consoles = [(each, dict(each.__dict__)) for each in (console.console, console.err_console)]
    saved_flags = dict(console.output), dict(console.verbosity)  # `main` sets them for its call
    typer_app = cli.app
    # A test may hold an engine or a Runtime of its own in these (a lab_runtime fixture, cli_home).
    saved_engines, holder = dict(cli_common._opened), flow_runtime._holder
    saved_runtime = holder.factory, holder.runtime
    cli_common._opened.clear()
    os.environ.clear()
    os.environ.update(env)
    try:
        if cwd is not None:
            os.chdir(cwd)
        flow_runtime.configure(None)
        if isinstance(typer_app, typer.Typer):
            # Typer builds the Click command tree from the type hints on every call (most of an
            # in-process call's time): build it once per process. `main` and its error mapping still run.
            cli.app = command_once(typer_app)
        with _prefect_settings_of_the_environment(), _no_flows():
            yield
    finally:
        cli_common.close_engine()  # `main` did, unless it never ran
        cli_common._opened.update(saved_engines)
        with holder.lock:
            holder.factory, holder.runtime = saved_runtime
        cli.app = typer_app
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        console.output.update(saved_flags[0])
        console.verbosity.update(saved_flags[1])
        for each, state in saved_consoles:  # as they were, not as a new process would make them
            each.__dict__.clear()
            each.__dict__.update(state)


_commands: dict[int, tuple[Any, Any]] = {}  # id(app) -> (app, its command): the app kept, its id not reused


def command_once(typer_app: Any) -> Any:
    """`typer_app` as a callable Click command, built once per process: Typer builds the whole command
    tree from type hints on every call of the app (~90 % of an in-process call's 60-120 ms)."""
    import typer.main

    if id(typer_app) not in _commands:
        command = typer.main.get_command(typer_app)
        _commands[id(typer_app)] = (typer_app, lambda *args, **kwargs: command(*args, **kwargs))
    return _commands[id(typer_app)][1]


def _fresh_consoles(console: Any, env: dict[str, str]) -> None:
    """Re-make the two Rich consoles in place (modules hold them by reference) as a new process makes
    them from `env`; their size as Rich finds it when no standard stream is a terminal."""
    console.console.__init__(**console.CONSOLE_OPTIONS)
    console.err_console.__init__(stderr=True, **console.CONSOLE_OPTIONS)
    columns, lines = env.get("COLUMNS", ""), env.get("LINES", "")
    size = (int(columns) if columns.isdigit() else 80, int(lines) if lines.isdigit() else 25)
    for each in (console.console, console.err_console):
        each.size = size


@contextlib.contextmanager
def _prefect_settings_of_the_environment() -> Iterator[None]:
    """Prefect's settings as a new process makes them at its start (from os.environ, now `env`, and
    the profiles file it names), not this process's: what a command reads of them (`doctor` reads
    PREFECT_API_URL) is the child's answer."""
    import prefect.context

    with prefect.context.root_settings_context():
        yield


@contextlib.contextmanager
def _no_flows() -> Iterator[None]:
    """Every flow call goes through `prefect.flow_engine.run_flow` (imported by `Flow.__call__` at
    each call); every CLI command that starts one (or a deployment run) first asks
    `upkeep.updates.prefect_answers` or enters `upkeep.bootstrap.quiet_prefect`, which changes this
    process's Prefect for good (its console log handlers filtered, its server module patched); every
    contact with the Prefect API goes through `prefect.client.orchestration.get_client` (imported
    where it is used), which would use this process's client and server. Each is refused instead."""
    import prefect.client.orchestration
    import prefect.flow_engine

    import upkeep.bootstrap
    import upkeep.updates

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise FlowInProcess(
            "a command run in-process started a Prefect flow or reached the Prefect API: run it in a "
            "child process"
        )

    patched = [
        (prefect.flow_engine, "run_flow"),
        (upkeep.updates, "prefect_answers"),
        (upkeep.bootstrap, "quiet_prefect"),
        (prefect.client.orchestration, "get_client"),
    ]
    saved = {name: getattr(module, name) for module, name in patched}
    for module, name in patched:
        setattr(module, name, refuse)
    try:
        yield
    finally:
        for module, name in patched:
            setattr(module, name, saved[name])
        _unbind(refuse, saved)


def _unbind(refuse: Any, saved: dict[str, Any]) -> None:
    """A module first imported while `_no_flows` held (a command's lazy imports) bound `refuse` for
    good under a name it imports at its top: prefect.artifacts, prefect.task_engine and two dozen more
    do `from prefect.client.orchestration import get_client`. Every later flow of this process then
    raised FlowInProcess where it created an artifact: test_no_traceback's in-process `update` failed
    whenever test_cli_in_process had run first in its worker (plain `-n 2`). Each such name is given
    back its real value."""
    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", None)  # the module's own names: no lazy __getattr__ run
        if not isinstance(names, dict):
            continue
        for name, value in saved.items():
            if names.get(name) is refuse:
                names[name] = value
