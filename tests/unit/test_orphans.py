"""tests/support/orphans.py: a server a test starts ends with the process that started it, even when
that process is killed with SIGKILL and runs no teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.orphans import die_with_parent

REPO = Path(__file__).resolve().parents[2]
STARTER = (
    "import subprocess, sys\n"
    "from tests.support.orphans import die_with_parent\n"
    "argv = ['/bin/sleep', '600']\n"
    "child = subprocess.Popen(die_with_parent(argv) if sys.argv[1] == 'guarded' else argv)\n"
    "print(child.pid, flush=True)\n"
    "sys.stdin.read()\n"
)


def _state(pid: int) -> str | None:
    """The process's state letter (Z: ended, not yet reaped), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _ended(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z"):
            return True
        time.sleep(0.05)
    return False


def _start_and_kill_the_starter(kind: str) -> int:
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, kind],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None
    pid = int(starter.stdout.readline())
    # Running, and it is the program asked for (the shim exec'd it, keeping its pid).
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"/bin/sleep":
        assert time.monotonic() < deadline, "the shim never exec'd the program"
        time.sleep(0.02)
    starter.kill()  # no teardown, no atexit
    starter.wait()
    return pid


def test_a_guarded_server_ends_when_its_starter_is_killed_with_sigkill() -> None:
    pid = _start_and_kill_the_starter("guarded")
    assert _ended(pid, within=30), f"pid {pid} outlived the process that started it"


def test_without_the_guard_it_would_be_left_running() -> None:
    """The control: what the guard is for (and proof the test above can fail)."""
    pid = _start_and_kill_the_starter("plain")
    try:
        assert _state(pid) not in (None, "Z")
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_start_whose_parent_is_already_gone_never_runs_the_program() -> None:
    argv = die_with_parent(["/bin/echo", "ran"])
    argv[4] = "1"  # a parent id that is not this process's: as if the starter had ended before prctl
    done = subprocess.run(argv, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "the process that started this one has ended\n"


def test_the_program_gets_its_arguments_and_exit_status() -> None:
    script = 'printf "%s|" "$@"; exit 3'
    done = subprocess.run(
        die_with_parent(["/bin/sh", "-c", script, "sh", "a b", ""]), capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (3, "a b||")


def test_a_program_named_without_a_path_is_found_on_path_as_popen_finds_it() -> None:
    done = subprocess.run(die_with_parent(["printf", "%s", "found"]), capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "found", "")


def test_a_program_that_cannot_run_is_one_line_naming_it_not_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-server"
    done = subprocess.run(die_with_parent([str(missing), "start"]), capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (127, "")
    assert done.stderr == f"cannot run {str(missing)!r}: No such file or directory\n"


def test_it_refuses_a_thread_that_is_not_the_main_one() -> None:
    """The kernel signals the child when the *thread* that started it ends: a server started from a
    ThreadPoolExecutor's thread would be killed at the pool's shutdown, while the test still uses it."""
    import threading

    caught: list[BaseException] = []

    def start() -> None:
        try:
            die_with_parent(["/bin/true"])
        except RuntimeError as exc:
            caught.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert [str(exc) for exc in caught] == [
        "die_with_parent: call it from the main thread (the child would be killed when this thread ends)"
    ]


def test_the_program_starts_with_the_signal_dispositions_popen_gives_it() -> None:
    """The shim is a Python, which ignores SIGPIPE and SIGXFSZ at its start, and an ignored signal stays
    ignored across exec: a shell server's `... | head` would then go on writing to a closed pipe."""
    probe = ["/bin/grep", "^SigIgn:", "/proc/self/status"]
    plain = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
    guarded = subprocess.run(die_with_parent(probe), capture_output=True, text=True, check=True).stdout
    assert guarded == plain
