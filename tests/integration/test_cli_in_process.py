"""`upkeep_here` (tests/support/cli.py) answers as `python -m upkeep` does in a child process: the same
stdout, stderr and exit code, byte for byte, on every kind of answer the tests that use it read (tables
at a width, JSON, refusals, usage errors, colour when forced, writes), and it leaves this process as it
found it. The tests that run the CLI in this process to save a child's start-up rely on this."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_cli_inventory import GOOD
from tests.support.cli import FlowInProcess, database, upkeep, upkeep_here

READ_ONLY: list[tuple[tuple[str, ...], dict[str, str]]] = [
    (("--help",), {}),  # the program's name in usage lines: `python -m upkeep`
    (("inventory", "show", "--json"), {}),
    (("calendar", "--now", "2026-10-30T12:00:00Z", "--weeks", "2"), {}),  # a table, 80 columns
    (("calendar", "--now", "2026-10-30T12:00:00Z", "--weeks", "2"), {"COLUMNS": "132"}),
    (("show", "999"), {}),  # a refusal: one line on stderr, exit 1
    (("show", "999"), {"FORCE_COLOR": "1"}),
    (("pause", "update-x"), {}),  # a usage error, exit 2
    (("pause", "update-x", "--json"), {}),
    (("no-such-command",), {}),
    (("settings", "--json"), {"UPKEEP_FILESERVER_PASSWORD": "MARKER-xyz"}),  # the environment given
    # Whichever comes first in this process, the other one too: the lab's consoles are made once.
    (("lab", "status", "--root", "no-lab"), {}),
    (("lab", "status", "--root", "no-lab"), {"FORCE_COLOR": "1"}),
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inproc")
    (root / "fleet.yaml").write_text(GOOD)
    home = root / "home"
    assert upkeep(home, "inventory", "import", "fleet.yaml").returncode == 0
    return home


@pytest.mark.parametrize(("args", "extra"), READ_ONLY, ids=[" ".join(a) + str(e) for a, e in READ_ONLY])
def test_the_same_answer_as_a_child_process(home: Path, args: tuple[str, ...], extra: dict[str, str]) -> None:
    environ, cwd, before = dict(os.environ), os.getcwd(), database(home)
    child = upkeep(home, *args, **extra)
    here = upkeep_here(home, *args, **extra)
    assert (here.returncode, here.stdout, here.stderr) == (child.returncode, child.stdout, child.stderr)
    assert child.stdout + child.stderr  # each case answers something
    assert dict(os.environ) == environ and os.getcwd() == cwd  # this process as it was
    assert database(home) == before


def test_a_write_answers_and_writes_the_same(tmp_path: Path) -> None:
    homes = []
    for name, run in (("child", upkeep), ("here", upkeep_here)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "fleet.yaml").write_text(GOOD)
        home = tmp_path / name / "home"
        imported = run(home, "inventory", "import", "fleet.yaml")  # relative: the working directory
        shown = run(home, "inventory", "show", "--json")
        homes.append((imported.returncode, imported.stdout, imported.stderr, shown.stdout))
    assert homes[0] == homes[1]
    assert homes[0][0] == 0 and homes[0][3].startswith("{")


def test_a_command_that_would_start_a_flow_is_refused_loudly(home: Path) -> None:
    """Here the flow would run with this process's Prefect client, server and logging, not a new one."""
    with pytest.raises(FlowInProcess):
        upkeep_here(home, "update", "acme-c1", "--to", "9.9.0")


def test_prefect_settings_are_the_environments(home: Path) -> None:
    """What a command reads of Prefect's settings comes from the environment given (here none), not
    from this process's (a test's Prefect harness, say): `doctor` reads PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        done = upkeep_here(home, "doctor", "--json")
        assert PREFECT_API_URL.value() == "http://127.0.0.1:9/api"  # this process's, put back
    [check] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "prefect api"]
    assert check["status"] == "warn" and "PREFECT_API_URL is not set" in check["detail"], check


def test_a_runtime_and_engine_this_process_holds_are_left_in_place(home: Path) -> None:
    """A test with a lab Runtime of its own (lab_runtime) may call the CLI in-process between flows."""
    from flows import runtime as flow_runtime
    from upkeep import cli_common

    def factory() -> None:
        raise AssertionError("the call built this process's Runtime")

    engine = object()
    flow_runtime.configure(factory)  # type: ignore[arg-type]
    cli_common._opened["engine"] = engine  # type: ignore[assignment]
    try:
        assert upkeep_here(home, "runs", "--json").returncode == 0
        assert flow_runtime._holder.factory is factory and cli_common._opened["engine"] is engine
    finally:
        flow_runtime.configure(None)
        cli_common._opened.clear()


@contextlib.contextmanager
def _terminal(columns: int) -> Iterator[int]:
    """A pseudo-terminal `columns` wide: the descriptor of its terminal end."""
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        yield slave
    finally:
        os.close(slave)
        os.close(master)


WIDE = ("calendar", "--now", "2026-10-30T12:00:00Z", "--weeks", "8")  # wider than 80 columns given room


def test_this_process_writing_to_a_terminal_changes_no_answer(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pytest -s` in a terminal: the tests' own sys.stdout and sys.stderr are that terminal. A child's
    output is a pipe all the same (no colour), and so is the in-process answer."""
    with _terminal(200) as slave, open(slave, "w", closefd=False) as tty:
        monkeypatch.setattr(sys, "stdout", tty)
        monkeypatch.setattr(sys, "stderr", tty)
        here = [upkeep_here(home, "inventory", "show"), upkeep_here(home, "show", "999")]
        monkeypatch.undo()
    child = [upkeep(home, "inventory", "show"), upkeep(home, "show", "999")]
    assert [(h.returncode, h.stdout, h.stderr) for h in here] == [
        (c.returncode, c.stdout, c.stderr) for c in child
    ]
    assert "\x1b[" not in child[0].stdout + child[1].stderr


def test_a_terminal_on_this_process_s_standard_input_changes_no_answer(home: Path) -> None:
    """`pytest -s` in a terminal: descriptor 0 is that terminal, and a child inherits it. The answer is
    still the 80-column one `home_env` promises whatever the terminal running the tests."""
    with _terminal(200) as slave:
        saved = os.dup(0)
        try:
            os.dup2(slave, 0)
            child = upkeep(home, *WIDE)
            here = upkeep_here(home, *WIDE)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
    assert (here.returncode, here.stdout, here.stderr) == (child.returncode, child.stdout, child.stderr)
    assert max(len(line) for line in child.stdout.splitlines()) <= 80


@pytest.mark.parametrize("args", [("case", "auto-close"), ("dispatch",)])
def test_a_refused_flow_leaves_this_process_s_prefect_as_it_was(home: Path, args: tuple[str, ...]) -> None:
    """The refusal comes before anything of the flow's touches this process: Prefect's console log
    handlers (the CLI filters them for good, as a process about to exit may) and its server module."""
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.server.api import server

    def consoles() -> list[PrefectConsoleHandler]:
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        return [
            h
            for each in loggers
            if isinstance(each, logging.Logger)
            for h in each.handlers
            if isinstance(h, PrefectConsoleHandler)
        ]

    # Prefect's logging set up, as in a test that runs flows. Importing prefect does not do it: run
    # alone, or first in its worker, this test found no handler (an earlier test's flow had set them up).
    if not consoles():
        setup_logging()
    handlers = consoles()
    assert handlers
    record = logging.LogRecord("prefect.flow_runs", logging.INFO, __file__, 1, "Finished", None, None)

    def state() -> tuple[object, ...]:
        # Relative to before the call: an earlier test of this worker may have filtered them already.
        return [list(h.filters) for h in handlers], [h.filter(record) for h in handlers], server.subprocess

    before = state()
    with pytest.raises(FlowInProcess):
        upkeep_here(home, *args)
    assert state() == before  # Prefect's lines reach this process's console as they did


def test_a_call_from_a_worker_thread_answers_as_the_child(home: Path) -> None:
    """A test may drive the CLI from a thread (one call at a time, the harness's lock): the first call
    imports `upkeep.cli` there, and `main` runs there. A fresh interpreter, so that the import is this
    thread's; the answer is compared with the child's."""
    script = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from tests.support.cli import upkeep_here\n"
        "done = []\n"
        "def call():\n"
        "    try:\n"
        "        done.append(upkeep_here(Path(sys.argv[1]), 'runs', '--json'))\n"
        "    except BaseException as exc:\n"
        "        done.append(exc)\n"
        "worker = threading.Thread(target=call)\n"
        "worker.start()\n"
        "worker.join()\n"
        "answer = done[0]\n"
        "sys.stdout.write(repr(answer) if isinstance(answer, BaseException) else answer.stdout)\n"
    )
    child = upkeep(home, "runs", "--json")
    here = subprocess.run(
        [sys.executable, "-c", script, str(home)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (here.returncode, here.stdout) == (0, child.stdout), here.stderr


@pytest.mark.parametrize(
    "extra",
    [{"PYTHONIOENCODING": "ascii"}, {"PYTHONUTF8": "0", "LC_ALL": "C"}, {"PYTHONUTF8": "2"}],
    ids=["PYTHONIOENCODING=ascii", "PYTHONUTF8=0 LC_ALL=C", "PYTHONUTF8=2"],
)
def test_an_interpreter_setting_it_cannot_give_is_refused(home: Path, extra: dict[str, str]) -> None:
    """The interpreter reads these as it starts (stdout's encoding; PYTHONUTF8=2 stops it): this process
    started with its own, and CliRunner always writes UTF-8. The same answer, or a loud refusal."""
    from tests.support import cli

    child = upkeep(home, "inventory", "show", **extra)
    try:
        here = upkeep_here(home, "inventory", "show", **extra)
    except getattr(cli, "NotInProcess", ()) as refused:  # () catches nothing: before it exists
        assert "child process" in str(refused)
        return
    assert (here.returncode, here.stdout, here.stderr) == (child.returncode, child.stdout, child.stderr)


def test_this_process_s_consoles_are_left_as_they_were(home: Path) -> None:
    """The CLI's two consoles, as this process holds them, after a call: not re-made for the call's 80
    columns (a console made without a width follows $COLUMNS and the terminal; under xdist, where
    COLUMNS=80 is set, one pinned at 80), and a file a test gave one is still its file."""
    import io

    from upkeep import console

    buffer = io.StringIO()
    # Not monkeypatch: undoing it would bind the console for good to the stream `file` read as then
    # (pytest's capture), and later tests of this worker (CliRunner) would see no output.
    kept = dict(console.console.__dict__)
    console.console.file = buffer  # a test capturing the console, say
    try:
        before = [dict(each.__dict__) for each in (console.console, console.err_console)]
        upkeep_here(home, "runs")
        assert console.console.file is buffer
        assert [each.__dict__ for each in (console.console, console.err_console)] == before
    finally:
        console.console.__dict__.clear()
        console.console.__dict__.update(kept)


def test_the_cli_s_per_call_flags_are_left_as_they_were(home: Path) -> None:
    """`--json` and `--verbose` of a call are the call's: this process's `output` and `verbosity` (read
    by `report_error` and `verbose()` wherever this process calls them) are as before it."""
    from upkeep import console

    before = dict(console.output), dict(console.verbosity)
    assert upkeep_here(home, "--verbose", "runs", "--json").returncode == 0
    assert (console.output, console.verbosity) == before


@pytest.mark.xfail(
    strict=True,
    reason="a log record goes to this process's logging handlers (pytest's, Prefect's console handler "
    "bound to the stream of its set-up time), not to the call's stderr; how a child shows it (logging's "
    "last resort, or Prefect's format once a command imported Prefect) depends on the command's imports",
)
def test_a_warning_the_cli_logs_is_on_the_in_process_stderr_too(tmp_path: Path) -> None:
    """A portal secret too short: notices go out with unsigned links, and `schedule` warns on stderr."""
    import yaml

    from tests.portal.conftest import INVENTORY

    short = {"UPKEEP_PORTAL_SECRET": "short", "UPKEEP_PORTAL_URL": "http://127.0.0.1:9/"}
    answers = []
    for name, run in (("child", upkeep), ("here", upkeep_here)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "fleet.yaml").write_text(yaml.safe_dump(INVENTORY))
        home = tmp_path / name / "home"
        assert run(home, "inventory", "import", "fleet.yaml", **short).returncode == 0
        scheduled = run(home, "schedule", "acme-c1", "--to", "9.9.0", **short)
        answers.append((scheduled.returncode, scheduled.stdout, scheduled.stderr))
    assert "portal links in notices are unsigned" in answers[0][2]
    assert answers[1] == answers[0]


def test_a_module_first_imported_during_a_refused_call_keeps_prefect_s_real_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's lazy imports can be a module's first import, made while the in-process guard has
    replaced Prefect's `get_client` with its refusal; a module binding it at its top (prefect.artifacts
    does) kept the refusal for good, and every later in-process flow of the worker failed with
    FlowInProcess at its first artifact (test_no_traceback after this file, plain `-n 2`)."""
    import importlib

    import prefect.client.orchestration

    from tests.support.cli import _no_flows

    real = prefect.client.orchestration.get_client
    (tmp_path / "binds_get_client_at_import.py").write_text(
        "from prefect.client.orchestration import get_client\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "binds_get_client_at_import", raising=False)
    with _no_flows():  # as during `upkeep_here`: a command's import, then its refused flow
        module = importlib.import_module("binds_get_client_at_import")
        with pytest.raises(FlowInProcess):
            module.get_client()
    assert module.get_client is real
