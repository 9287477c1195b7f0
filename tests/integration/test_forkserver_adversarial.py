"""adv26: where tests/support/forkserver.py does not answer as `subprocess` and a fresh `python -m upkeep`
would, for the same call (arguments, environment, working directory, stdio) from the same test process.
Each test here ran red against the fork server as first committed (272da90)."""

from __future__ import annotations

import os
import pty
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_forkserver import INVENTORY, _in_read, _reading, _same, forked, fresh
from tests.support import forkserver
from tests.support.cli import home_env

UPKEEP = [sys.executable, "-m", "upkeep"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return home_env(tmp_path / "home")


def _popen(how: str, args: list[str], env: dict[str, str], cwd: Path, **kwargs: Any) -> Any:
    """The same call, fresh (`subprocess.Popen`) or forked (`forkserver.popen`)."""
    if how == "forked":
        return forkserver.popen(args, env=env, cwd=cwd, **kwargs)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    return subprocess.Popen([*UPKEEP, *args], env=env, cwd=cwd, **kwargs)


def _umask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask: in /proc/self/status")


# -- process state a child inherits from the process that starts it ------------------------------------------
def test_the_umask_is_the_callers_not_the_servers(env: dict[str, str], tmp_path: Path) -> None:
    """A fresh child inherits the test process's umask at the call; a forked one had the server's (the
    test process's when the server started): the database file's mode differed (0644 vs 0600)."""
    _same(["--help"], env, tmp_path)  # the server runs, started under the usual umask
    other = 0o077 if _umask() != 0o077 else 0o027
    modes = {}
    previous = os.umask(other)
    try:
        for how, call in (("fresh", fresh), ("forked", forked)):
            home = tmp_path / how
            code, _out, err = call(["db", "upgrade"], {**env, "UPKEEP_HOME": str(home)}, tmp_path)
            assert code == 0, err
            modes[how] = stat.S_IMODE((home / "upkeep.db").stat().st_mode)
    finally:
        os.umask(previous)
    assert modes["forked"] == modes["fresh"] == 0o666 & ~other, {k: oct(v) for k, v in modes.items()}


def test_a_sigint_the_caller_ignores_is_ignored_by_the_child_too(env: dict[str, str], tmp_path: Path) -> None:
    """An ignored signal stays ignored across fork and exec (how `nohup` or a shell's `cmd &` start a
    process), and the CLI keeps it so ("not when SIGINT is ignored", upkeep/cli.py). A forked child took
    the server's handler instead: Ctrl-C aborted it (130) where a fresh one read on."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal.signal needs the main thread")
    _same(["db", "upgrade"], env, tmp_path)  # the server runs, started with SIGINT handled
    fifo = tmp_path / "fleet.yaml"
    os.mkfifo(fifo)
    answers = []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for how in ("fresh", "forked"):
            proc = _popen(how, ["inventory", "import", str(fifo)], env, tmp_path)
            writer = _reading(fifo)
            _in_read(proc.pid)
            os.kill(proc.pid, signal.SIGINT)  # ignored: the import reads on, and finds an empty file
            os.close(writer)
            out, err = proc.communicate(timeout=120)
            answers.append((proc.returncode, out, err))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert answers[0] == answers[1]
    assert answers[0][0] == 1, answers[0]


# -- the working directory -----------------------------------------------------------------------------------
def test_a_relative_cwd_is_the_callers_working_directory(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """subprocess resolves a relative `cwd` from the caller's working directory; the fork server resolved
    it from its own (the checkout): the child failed to start, a traceback and exit 1."""
    (tmp_path / "fleet.yaml").write_text(INVENTORY)
    _same(["db", "upgrade"], env, tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    code, _out, err = _same(["inventory", "import", "fleet.yaml"], env, Path(tmp_path.name), writes=True)
    assert code == 0, err


def test_a_missing_cwd_is_the_callers_error_as_with_subprocess(env: dict[str, str], tmp_path: Path) -> None:
    """subprocess raises FileNotFoundError in the caller, and starts nothing; the forked child started,
    printed a traceback of the fork server's code and exited 1."""
    gone = tmp_path / "gone"
    with pytest.raises(FileNotFoundError):
        subprocess.run([*UPKEEP, "--help"], env=env, cwd=gone, capture_output=True)
    with pytest.raises(FileNotFoundError):
        forkserver.run(["--help"], env=env, cwd=gone)


# -- stdin, stdout, stderr -----------------------------------------------------------------------------------
def test_input_the_child_does_not_read_is_no_error(env: dict[str, str], tmp_path: Path) -> None:
    """`subprocess.run(input=...)` ignores EPIPE when the child ends without reading all of it; the forked
    run raised BrokenPipeError out of the test."""
    data = "y\n" * 500_000  # more than a pipe holds: the write waits until the child has ended
    child = subprocess.run(
        [*UPKEEP, "--help"], env=env, cwd=tmp_path, input=data, capture_output=True, text=True
    )
    mine = forkserver.run(["--help"], env=env, cwd=tmp_path, input=data)
    assert (mine.returncode, mine.stdout, mine.stderr) == (child.returncode, child.stdout, child.stderr)


def test_the_timeout_bounds_writing_the_input_too(env: dict[str, str], tmp_path: Path) -> None:
    """A child that neither reads its stdin nor ends: `subprocess.run(input=..., timeout=5)` raises
    TimeoutExpired after 5 s; the forked run blocked in the write, past any timeout."""
    _same(["db", "upgrade"], env, tmp_path)
    fifo = tmp_path / "fleet.yaml"
    os.mkfifo(fifo)
    data = "y\n" * 500_000
    raised: list[BaseException] = []

    def call() -> None:
        try:
            forkserver.run(["inventory", "import", str(fifo)], env=env, cwd=tmp_path, input=data, timeout=5)
        except BaseException as exc:
            raised.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    writer = _reading(fifo)
    try:
        caller.join(90)
        finished = not caller.is_alive()
    finally:
        os.close(writer)  # the child reads an empty file and ends: a blocked write ends with it
        caller.join(90)
    assert finished, "forkserver.run(timeout=5) still writing the input after 90 s"
    assert len(raised) == 1 and isinstance(raised[0], subprocess.TimeoutExpired), raised


def test_communicate_again_after_a_timeout_returns_the_output(env: dict[str, str], tmp_path: Path) -> None:
    """The pattern subprocess's documentation gives (communicate(timeout) -> TimeoutExpired -> communicate()
    again) returns all of the output; the forked child's output went to the first call's readers, and
    the second call returned ('', '')."""
    _same(["db", "upgrade"], env, tmp_path)
    fifo = tmp_path / "fleet.yaml"
    os.mkfifo(fifo)
    answers = []
    for how in ("fresh", "forked"):
        proc = _popen(how, ["inventory", "import", str(fifo)], env, tmp_path)
        writer = _reading(fifo)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.communicate(timeout=0.5)
        os.close(writer)  # an empty file: the import refuses it, on stderr
        out, err = proc.communicate(timeout=120)
        answers.append((proc.returncode, out, err))
    assert answers[0] == answers[1]
    assert answers[0][0] == 1 and answers[0][2], answers[0]


def test_stdout_and_stderr_none_are_the_callers_as_with_subprocess(
    env: dict[str, str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`stdout=None` (and stderr, stdin): the child writes where the caller's own fd 1 goes, as
    tests/faults' `forkserver.popen(..., stdin=None)` read it; the forked child wrote to /dev/null."""
    answers = []
    for how in ("fresh", "forked"):
        proc = _popen(how, ["nosuch"], env, tmp_path, stdout=None, stderr=None)
        proc.wait(timeout=120)
        captured = capfd.readouterr()
        answers.append((proc.returncode, captured.out, captured.err))
    assert answers[0] == answers[1]
    assert "No such command" in answers[0][2], answers[0]


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "verbose"])
def test_a_closed_stdout_ends_it_as_it_ends_a_fresh_interpreter(
    verbose: bool, env: dict[str, str], tmp_path: Path
) -> None:
    """stdout a pipe nobody reads (`upkeep ... | head -0`): the same exit code and stderr (a guard of
    the child's streams and exit, made as CPython makes them; it passed at 272da90 too, where Upkeep
    itself answers EPIPE)."""
    args = [*(["--verbose"] if verbose else []), "--help"]
    answers = []
    for how in ("fresh", "forked"):
        read, write = os.pipe()
        os.close(read)  # EPIPE at the first write
        try:
            proc = _popen(how, args, env, tmp_path, stdout=write)
        finally:
            os.close(write)
        _out, err = proc.communicate(timeout=120)
        answers.append((proc.returncode, err))
    assert answers[0] == answers[1]


# -- Prefect, as a fresh interpreter imports it --------------------------------------------------------------
def test_prefects_first_run_notice_for_an_operator_who_allows_telemetry(
    env: dict[str, str], tmp_path: Path
) -> None:
    """DO_NOT_TRACK=0 (an operator's explicit choice, kept by upkeep/telemetry.py) in a terminal: a fresh
    interpreter's `import prefect` shows Prefect's telemetry notice and marks it shown under PREFECT_HOME.
    The server had imported Prefect once with DO_NOT_TRACK=1: a forked child never did either."""
    ci = {"CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "CIRCLECI", "BUILDKITE", "TF_BUILD"}
    base = {k: v for k, v in env.items() if k not in ci}
    seen = {}
    for how in ("fresh", "forked"):
        prefect_home = tmp_path / how / "prefect"
        child_env = {
            **base,
            "DO_NOT_TRACK": "0",
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_API_URL": "http://127.0.0.1:9/api",  # nothing listens: no temporary server
        }
        primary, replica = pty.openpty()
        try:
            proc = _popen(
                how, ["doctor", "--json"], child_env, tmp_path, stdout=replica, stderr=replica, text=False
            )
        finally:
            os.close(replica)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child and all that held the terminal are gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(primary)
        proc.wait(timeout=120)
        seen[how] = (
            (prefect_home / ".sdk_telemetry" / "notice_shown").exists(),
            b"anonymous usage data" in b"".join(chunks),
        )
    assert seen["forked"] == seen["fresh"], seen


# -- the processes behind a forked child ---------------------------------------------------------------------
def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_ctrl_c_to_the_whole_process_group_ends_the_child_not_the_bookkeeping(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Ctrl-C at a terminal running pytest signals its whole foreground process group: the test process,
    a fresh child (same group), and with the fork server the waiter too. The waiter ran the server's SIGINT
    handler (upkeep.cli's `_interrupted_while_starting`: "error: aborted", exit 130) and the call ended
    in RuntimeError("...waiter... vanished") instead of the child's exit code."""
    _same(["db", "upgrade"], env, tmp_path)
    fifo = tmp_path / "fleet.yaml"
    os.mkfifo(fifo)
    proc = forkserver.popen(["inventory", "import", str(fifo)], env=env, cwd=tmp_path)
    writer = _reading(fifo)
    _in_read(proc.pid)
    waiter = _parent(proc.pid)
    assert waiter != os.getpid()
    os.kill(waiter, signal.SIGINT)  # the waiter first: it is what must not mind
    os.kill(proc.pid, signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=120)
    finally:
        os.close(writer)
    assert proc.returncode == 130, err


def test_a_call_right_after_the_fork_server_was_killed(env: dict[str, str], tmp_path: Path) -> None:
    """kill -9 of the fork server (an OOM kill, say), then a call at once: the server's death is not yet
    visible to poll() when the call checks, and the call failed with RuntimeError("the fork server
    closed the call ...") or BrokenPipeError instead of starting a new server."""
    for _ in range(5):
        server = forkserver._the_server()
        os.kill(server.proc.pid, signal.SIGKILL)
        done = forkserver.run(["nosuch"], env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == 2, done.stderr


# -- what the server's imports read from its environment ---------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [{"TYPER_USE_RICH": "0"}, {"FORCE_COLOR": "1"}, {"TERMINAL_WIDTH": "60"}, {"GITHUB_ACTIONS": "true"}],
    ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()),
)
def test_typers_import_time_settings_are_the_childs(
    extra: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Typer reads TYPER_USE_RICH at `import typer` (typer.core.HAS_RICH: Rich help and error panels, or
    Click's plain ones) and its help's colour and width at `import typer.rich_utils`; a forked child
    had the server's."""
    for args in (["--help"], ["nosuch"]):
        _same(args, {**env, **extra}, tmp_path)


def _ended(pid: int) -> None:
    """Wait (bounded) until `pid` has ended: a zombie, or gone."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    pytest.fail(f"{pid} still running")


def test_an_ended_child_keeps_its_pid_until_the_caller_collects_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    """An ended Popen child stays a zombie until its caller waits (poll, wait, communicate): kill(pid, 0)
    still finds it (Upkeep's own flows/lease.py holder_gone() reads that) and no other process can be
    given its pid, so a late proc.kill() never signals another process. The waiter reaped a forked
    child at once: kill(pid, 0) failed, and the pid was free for reuse while the test still held it."""
    for how in ("fresh", "forked"):
        proc = _popen(how, ["nosuch"], env, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _ended(proc.pid)
        os.kill(proc.pid, 0)  # ProcessLookupError: reaped by someone else than the caller
        assert proc.wait(timeout=60) == 2, how


# -- an exception nothing catches: the interpreter's report ------------------------------------------------
def test_verbose_shows_the_traceback_a_fresh_interpreter_shows(env: dict[str, str], tmp_path: Path) -> None:
    """`upkeep --verbose` promises the traceback of an unexpected error. A fresh interpreter shows it
    through sys.excepthook (Typer's: a Rich panel), from `python -m`'s frames (or the console script's)
    on; the forked child printed traceback.print_exc()'s plain one, starting in the fork server's code."""
    # A database under /dev/null: NotADirectoryError, not one of the errors Upkeep explains.
    broken = {**env, "UPKEEP_DATABASE_URL": "sqlite:////dev/null/x/upkeep.db"}
    code, _out, err = _same(["--verbose", "runs"], broken, tmp_path)
    assert code == 1 and "Traceback" in err, err
    script = str(Path(sys.executable).parent / "upkeep")
    child = subprocess.run(
        [script, "--verbose", "runs"], env=broken, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    mine = forkserver.run(["--verbose", "runs"], env=broken, cwd=tmp_path, console_script=True, timeout=120)
    assert (mine.returncode, mine.stdout, mine.stderr) == (child.returncode, child.stdout, child.stderr)
