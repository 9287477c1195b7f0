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
