"""The orphan rule for running runs (flows/lease.py) and how often a lease is renewed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

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
