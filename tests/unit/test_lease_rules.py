"""The orphan rule for running runs (flows/lease.py) and how often a lease is renewed."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.lease import expired, renew_every

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lease_until", "orphaned"),
    [
        (None, False),  # no lease: nothing says it was abandoned
        (NOW + timedelta(seconds=1), False),
        (NOW, True),  # runs out at that instant, as the SQL form (lease_until <= now) says
        (NOW - timedelta(seconds=1), True),
        (NOW - timedelta(days=30), True),
    ],
)
def test_a_running_run_is_orphaned_once_its_lease_ran_out(lease_until: datetime | None, orphaned: bool):
    assert expired(lease_until, NOW) is orphaned


def test_a_lease_gets_ten_renewals_before_it_runs_out():
    assert renew_every(timedelta(minutes=5)) == 30.0
    assert renew_every(timedelta(seconds=30)) == 3.0


def test_lease_settings_refuse_a_lease_too_short_to_renew(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from upkeep.settings import SettingsError, load_settings

    monkeypatch.setenv("UPKEEP_HOME", str(tmp_path))
    monkeypatch.setenv("UPKEEP_RUN_LEASE_SECONDS", "5")
    with pytest.raises(SettingsError, match=r"UPKEEP_RUN_LEASE_SECONDS.*'5'"):
        load_settings()


def test_a_holder_that_is_only_a_zombie_is_gone_a_live_one_is_not() -> None:
    """kill -9 of `upkeep update` under a shell or supervisor that has not collected it yet: its pid is
    a zombie. `upkeep resume` took it for alive and refused ("being carried out by host:pid") until its
    parent reaped it, or the lease ran out."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from flows.lease import holder_gone

    host = socket.gethostname()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) as live:
        try:
            assert holder_gone(f"{host}:{live.pid}/abc123") is False
            live.kill()
            deadline = time.monotonic() + 60  # until the kernel has made it a zombie; never collected here
            while Path(f"/proc/{live.pid}/stat").read_bytes().rpartition(b")")[2][1:2] != b"Z":
                assert time.monotonic() < deadline, "the killed child never became a zombie"
                time.sleep(0.01)
            os.kill(live.pid, 0)  # still there for kill(2): what holder_gone read as alive
            assert holder_gone(f"{host}:{live.pid}/abc123") is True
            assert holder_gone(f"elsewhere:{live.pid}/abc123") is False  # another host's pid says nothing
        finally:
            live.kill()


def test_a_holder_whose_main_thread_ended_while_its_other_threads_run_is_not_gone() -> None:
    """/proc/PID/stat gives the thread-group leader's own state: a process whose main thread ended
    (SYS_exit) while its other threads go on reads `Z` there, yet it is alive - kill(2) finds it, its
    threads (a lease heartbeat, a node's upgrade) still run. holder_gone took it for gone, and `upkeep
    resume` took over a run still being carried out (adversarial pass adv32)."""
    import ctypes
    import platform
    import socket
    import subprocess
    import sys
    import time

    from flows.lease import holder_gone

    if not Path("/proc/self/task").is_dir() or platform.machine() != "x86_64":
        pytest.skip("Linux x86_64 only: SYS_exit is called by its number")
    assert ctypes.sizeof(ctypes.c_void_p) == 8
    code = (
        "import ctypes, sys, threading, time\n"
        "threading.Thread(target=lambda: time.sleep(600), daemon=True).start()\n"
        "ctypes.CDLL(None).syscall(60, 0)\n"  # SYS_exit: the main thread only
    )
    host = socket.gethostname()
    with subprocess.Popen([sys.executable, "-c", code]) as half:
        try:
            deadline = time.monotonic() + 60  # until the main thread has ended; its sleeper thread has not
            while Path(f"/proc/{half.pid}/stat").read_bytes().rpartition(b")")[2][1:2] != b"Z":
                assert half.poll() is None, "the whole process ended"
                assert time.monotonic() < deadline, "the main thread never ended"
                time.sleep(0.01)
            assert len(list(Path(f"/proc/{half.pid}/task").iterdir())) == 2  # its other thread runs on
            assert holder_gone(f"{host}:{half.pid}/abc123") is False
        finally:
            half.kill()


# -- a pid given to another process since (the holder's birth in its owner) ------------------------------
_REPO = Path(__file__).resolve().parents[2]
# A holder: takes an owner as `upkeep update` does (flows/lease.new_owner), says it, and lives on.
_HOLDER = "from flows.lease import new_owner; print(new_owner(), flush=True); import time; time.sleep(600)"


def _python(code: str) -> Any:
    """A Python child running `code` with this checkout importable, its stdout a pipe."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def _until_zombie(pid: int) -> None:
    import time

    deadline = time.monotonic() + 60  # until the kernel has made it a zombie; never collected here
    while Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2][1:2] != b"Z":
        assert time.monotonic() < deadline, f"{pid} never became a zombie"
        time.sleep(0.01)


def _linux() -> None:
    if not all(Path(f"/proc/{part}").exists() for part in ("self/stat", "self/ns/pid", "sys/kernel/random")):
        pytest.skip("no /proc to read a process's start from: holder_gone is kill(2) alone there")


def test_a_live_holder_is_alive_this_process_or_a_child_holding_its_own_lease() -> None:
    """The holder's own owner, read back while it lives, is alive: this test process's, and a child's
    that took its lease after it started (as every holder does). Once killed it is gone: a zombie
    (nobody collected it yet), and once collected (its pid free)."""
    from flows.lease import holder_gone, holder_label, new_owner

    _linux()
    mine = new_owner()
    assert "@" in mine and holder_gone(mine) is False
    assert holder_label(mine) == f"{socket.gethostname()}:{os.getpid()}"  # what an operator looks for
    with _python(_HOLDER) as child:
        try:
            owner = child.stdout.readline().strip()
            assert owner.startswith(f"{socket.gethostname()}:{child.pid}@"), owner
            assert holder_gone(owner) is False
            child.kill()
            _until_zombie(child.pid)
            assert holder_gone(owner) is True  # (5) a zombie holder is gone, birth or no birth
        finally:
            child.kill()
    assert holder_gone(owner) is True  # collected: no process has its pid


def test_a_holder_whose_pid_is_another_process_s_now_is_gone() -> None:
    """The holder was killed long ago and its pid given since to a process started after the lease was
    taken (here: a `sleep` started now, under an owner born when this test process was). kill(2) finds
    that process; its start is not the holder's: gone. The same pid under an owner written before births
    were recorded (`host:pid/random`) is read as it always was: alive, until its lease runs out."""
    import subprocess

    from flows.lease import holder_gone, holder_label, new_owner

    _linux()
    host = socket.gethostname()
    with subprocess.Popen(["sleep", "600"]) as stranger:
        try:
            earlier = new_owner().replace(f":{os.getpid()}@", f":{stranger.pid}@", 1)
            assert earlier.startswith(f"{host}:{stranger.pid}@"), earlier
            assert holder_gone(earlier) is True
            assert holder_label(earlier) == f"{host}:{stranger.pid}"
            assert holder_gone(f"{host}:{stranger.pid}/abc123") is False  # (4) the old form, as before
            ticks, _, rest = new_owner().partition("@")[2].partition(".")
            before_me = f"{host}:{os.getpid()}@{int(ticks) - 1}.{rest}"  # an earlier process with my pid
            assert holder_gone(before_me) is True
            assert holder_gone(f"elsewhere:{stranger.pid}@1.{earlier.split('.')[-1]}") is False
        finally:
            stranger.kill()


@pytest.mark.parametrize(
    "birth",
    [
        "@1.000000000000",  # another boot, or another pid or time namespace (a pod's other container)
        "@1.",  # malformed: cannot be told either
        "@x.abc",
        "@",
        "@1",
    ],
)
def test_a_birth_this_process_cannot_compare_leaves_the_pid_rule_as_it_was(birth: str) -> None:
    """Only a birth from this boot and this process's pid and time namespaces says anything about the pid
    here: a pod's other container shares the host name but not the pids (its pid 1 is not ours). Anything
    else cannot be told from here: alive until its lease runs out (a free pid too: see
    test_a_holder_whose_free_pid_is_not_this_process_s_to_read_is_not_gone)."""
    import subprocess

    from flows.lease import holder_gone

    _linux()
    with subprocess.Popen(["sleep", "600"]) as live:
        try:
            assert holder_gone(f"{socket.gethostname()}:{live.pid}{birth}/abc123") is False
        finally:
            live.kill()


def test_a_holder_whose_main_thread_ended_is_not_gone_under_its_own_birth() -> None:
    """adv32 again, under the owner the process wrote itself: its main thread ended (/proc/PID/stat reads
    Z) but its start is still its own, and its other threads run: alive."""
    import platform

    from flows.lease import holder_gone

    _linux()
    if platform.machine() != "x86_64":
        pytest.skip("Linux x86_64 only: SYS_exit is called by its number")
    code = (
        "import ctypes, sys, threading, time\n"
        "from flows.lease import new_owner\n"
        "print(new_owner(), flush=True)\n"
        "threading.Thread(target=lambda: time.sleep(600), daemon=True).start()\n"
        "ctypes.CDLL(None).syscall(60, 0)\n"  # SYS_exit: the main thread only
    )
    with _python(code) as half:
        try:
            owner = half.stdout.readline().strip()
            _until_zombie(half.pid)
            assert half.poll() is None and len(list(Path(f"/proc/{half.pid}/task").iterdir())) == 2
            assert holder_gone(owner) is False
        finally:
            half.kill()


def test_a_forked_child_writes_its_own_birth() -> None:
    """new_owner reads the birth anew at each call: a child forked after its parent wrote an owner (a
    dispatcher's worker) writes its own start, not its parent's - which would read as a reused pid, and
    gone, while the child lives."""
    from flows.lease import holder_gone

    _linux()
    code = (
        "import os, time\n"
        "from flows.lease import new_owner\n"
        "print(new_owner(), flush=True)\n"
        "if os.fork() == 0:\n"
        "    print(os.getpid(), new_owner(), flush=True); time.sleep(600)\n"
        "else:\n"
        "    os.wait()\n"
    )
    with _python(code) as parent:
        parents = parent.stdout.readline().strip()
        pid, owner = parent.stdout.readline().split()
        child = int(pid)
        try:
            assert owner.startswith(f"{socket.gethostname()}:{child}@"), owner
            assert child != parent.pid and parents.startswith(f"{socket.gethostname()}:{parent.pid}@")
            started = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[19]
            assert owner.split("@")[1].split(".")[0] == started, owner  # field 22: its own start
            assert holder_gone(owner) is False
        finally:
            os.kill(child, 9)  # the parent collects it
            parent.wait()


# In a pid namespace of its own (pid 1 there, nothing else forking), a pid is given again at will
# (ns_last_pid): the holder takes its lease and dies, and its very pid goes to a process started since.
_REUSE = """
import subprocess, sys
from flows.lease import holder_gone, holder_label

HOLDER = "from flows.lease import new_owner; print(new_owner(), flush=True)"
holder = subprocess.run([sys.executable, "-c", HOLDER], capture_output=True, text=True, check=True)
dead = holder.stdout.strip()
pid = int(holder_label(dead).rpartition(":")[2])
gone_when_free = holder_gone(dead)
with open("/proc/sys/kernel/ns_last_pid", "w") as last:
    last.write(str(pid - 1))
code = HOLDER + "; import time; time.sleep(600)"
with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as stranger:
    live = stranger.stdout.readline().strip()
    same_label = holder_label(dead) == holder_label(live)  # one host:pid, two processes
    print(stranger.pid == pid, gone_when_free, holder_gone(dead), holder_gone(live), same_label)
    stranger.kill()
"""


def test_a_pid_really_given_again_to_a_process_started_since_is_not_the_holder() -> None:
    """The same, with no owner made up: a holder takes its lease and dies, and its pid is given to a
    process started after that (in a pid namespace of the test's own, where the next pid can be set).
    Under its dead holder's owner that pid is gone; under the owner the new process took itself, alive."""
    import shutil
    import subprocess
    import sys

    _linux()
    unshare = shutil.which("unshare")
    isolate = [unshare or "unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
    if unshare is None or subprocess.run([*isolate, "true"], capture_output=True).returncode != 0:
        pytest.skip("no user and pid namespace to be had here (unshare)")
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    out = subprocess.run([*isolate, sys.executable, "-c", _REUSE], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    # same pid, holder gone once its pid was free, and after its reuse; the new process alive
    assert out.stdout.split() == ["True", "True", "True", "False", "True"], out.stdout


# -- a holder on this host name whose pids are not ours (adversarial pass adv42) -------------------------
def _free_pid() -> int:
    """A pid no process of this pid namespace has: a child's, once collected (given again only after the
    pids wrap around)."""
    import subprocess

    with subprocess.Popen(["true"]) as gone:
        pass
    assert not Path(f"/proc/{gone.pid}").exists()
    return gone.pid


# A holder in a pid namespace of its own, with this host name (a pod's other container): it takes its
# lease under the pid given on the command line there, says its owner and lives on.
_IN_ANOTHER_CONTAINER = """
import subprocess, sys
with open("/proc/sys/kernel/ns_last_pid", "w") as last:
    last.write(str(int(sys.argv[1]) - 1))
HOLDER = "from flows.lease import new_owner; print(new_owner(), flush=True); import time; time.sleep(600)"
subprocess.run([sys.executable, "-c", HOLDER])
"""


def test_a_live_holder_in_another_pid_namespace_with_this_host_name_is_not_gone() -> None:
    """Two containers of one pod share a host name, not their pids: the other container's holder has a
    pid that no process has here (or another process has). kill(2) found none and the holder read gone:
    `upkeep resume` took over a run whose process still upgraded the customer's nodes. Its owner says
    where its pid means something (the birth's space): another space than ours cannot be told from
    here, and is alive until its lease runs out. Here a real holder, in a pid namespace of the test's
    own, under a pid that is free in this one."""
    import shutil
    import subprocess
    import sys

    from flows.lease import holder_gone, holder_label

    _linux()
    unshare = shutil.which("unshare")
    isolate = [unshare or "unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
    if unshare is None or subprocess.run([*isolate, "true"], capture_output=True).returncode != 0:
        pytest.skip("no user and pid namespace to be had here (unshare)")
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    free = _free_pid()
    command = [*isolate, "--kill-child", sys.executable, "-c", _IN_ANOTHER_CONTAINER, str(free)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as container:
        try:
            assert container.stdout is not None
            owner = container.stdout.readline().strip()
            assert owner.startswith(f"{socket.gethostname()}:{free}@"), owner  # the pid it was given there
            assert not Path(f"/proc/{free}").exists(), "the pid was given here meanwhile: nothing proven"
            assert holder_label(owner) == f"{socket.gethostname()}:{free}"
            assert holder_gone(owner) is False
        finally:
            container.kill()


@pytest.mark.parametrize(
    ("birth", "gone"),
    [
        ("", True),  # written before births were recorded: kill(2) alone, as it always was
        ("@1.000000000000", False),  # another boot, pid or time namespace: cannot be told from here
        ("@1.", False),  # a birth that cannot be read: cannot be told either
        ("@x.abc", False),
        ("@", False),
        ("@1", False),
        ("@١٢٣.abc", False),  # digits str.isdigit() takes, int() too
        ("@-1.abc", False),
        ("@" + "9" * 5000 + ".abc", False),  # more digits than int() converts
    ],
)
def test_a_holder_whose_free_pid_is_not_this_process_s_to_read_is_not_gone(birth: str, gone: bool) -> None:
    """The same by hand: an owner of this host name under a pid no process has here. Only an owner
    without a birth keeps the old rule (its pid free: gone); one with a birth from elsewhere, or one
    that cannot be read, waits for its lease."""
    from flows.lease import holder_gone

    _linux()
    assert holder_gone(f"{socket.gethostname()}:{_free_pid()}{birth}/abc123") is gone


@pytest.mark.parametrize(
    "pid",
    [
        "2147483648",  # over pid_t: os.kill raised OverflowError (a traceback from `upkeep cancel`)
        "99999999999999999999",
        "9" * 5000,  # over int()'s digits: ValueError
        "١٢٣",  # str.isdigit() and int() take it: kill(2) asked about pid 123
        "-1",
        "",
    ],
)
def test_an_owner_written_by_hand_with_no_pid_in_it_is_alive_and_never_raises(pid: str) -> None:
    """A lease owner is a database column: a hand-written one (old form, no birth) whose "pid" no
    process can have is not read as a pid at all - alive until its lease runs out, never an exception
    out of `upkeep resume`, `upkeep cancel` or `upkeep approve`."""
    from flows.lease import holder_gone, holder_label, unseen_here

    owner = f"{socket.gethostname()}:{pid}/abc123"
    assert holder_gone(owner) is False
    assert unseen_here(owner) is False
    assert holder_label(owner) == f"{socket.gethostname()}:{pid}"


def test_a_holder_that_execs_another_program_keeps_its_pid_and_birth_and_reads_alive() -> None:
    """exec() keeps the pid and the start: the birth still matches, so the holder is never "gone" while
    that process lives (whatever it runs now); its lease, no longer renewed, runs out instead."""
    import shutil
    import time

    from flows.lease import holder_gone

    _linux()
    sleep = shutil.which("sleep") or "/bin/sleep"
    code = (
        "import os\n"
        "from flows.lease import new_owner\n"
        "print(new_owner(), flush=True)\n"
        f"os.execv({sleep!r}, ['sleep', '600'])\n"
    )
    with _python(code) as holder:
        try:
            owner = holder.stdout.readline().strip()
            assert owner.startswith(f"{socket.gethostname()}:{holder.pid}@"), owner
            deadline = time.monotonic() + 60  # until the exec took place
            while Path(f"/proc/{holder.pid}/exe").resolve() != Path(sleep).resolve():
                assert holder.poll() is None and time.monotonic() < deadline, "the holder never exec'd"
                time.sleep(0.01)
            assert holder_gone(owner) is False
        finally:
            holder.kill()


def test_where_this_process_cannot_read_its_own_proc_it_writes_the_old_owner_and_tells_no_birth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/proc unreadable (not mounted, another namespace's, hidden): new_owner writes `host:pid/random`,
    and an owner with a birth is one this process cannot compare: alive, even on a pid free here."""
    import flows.lease as lease_module

    _linux()
    free = _free_pid()
    monkeypatch.setattr(lease_module, "_space", lambda: None)
    owner = lease_module.new_owner()
    assert owner.startswith(f"{socket.gethostname()}:{os.getpid()}/") and "@" not in owner, owner
    assert lease_module.holder_gone(owner) is False  # itself
    assert lease_module.holder_gone(f"{socket.gethostname()}:{free}@1.abcdefabcdef/abc123") is False
    assert lease_module.holder_gone(f"{socket.gethostname()}:{free}/abc123") is True  # the old rule


@pytest.mark.parametrize(
    ("owner", "other", "same"),
    [
        ("h:7@100.abcdefabcdef/aaaaaa", "h:7@100.abcdefabcdef/bbbbbb", True),  # two claims of one process
        ("h:7@100.abcdefabcdef/aaaaaa", "h:7@100.123456123456/aaaaaa", False),  # pid 7 of another space
        ("h:7@100.abcdefabcdef/aaaaaa", "h:7@101.abcdefabcdef/aaaaaa", False),  # pid 7 given again
        ("h:7@100.abcdefabcdef/aaaaaa", "g:7@100.abcdefabcdef/aaaaaa", False),
        ("h:7/aaaaaa", "h:7/bbbbbb", True),  # no birth: host:pid, as before
        ("h:7/aaaaaa", "h:7@100.abcdefabcdef/bbbbbb", True),  # one without: cannot tell more than host:pid
        ("h:7/aaaaaa", "h:8/aaaaaa", False),
    ],
)
def test_two_owners_are_one_process_s_only_under_one_host_pid_and_birth(owner: str, other: str, same: bool):
    """adv44: the CLI told a run "taken from this process" by `host:pid`, which two containers of one pod
    share (pid 1 in each); the birth tells them apart where both owners have one."""
    from flows.lease import same_process

    assert same_process(owner, other) is same
    assert same_process(other, owner) is same
