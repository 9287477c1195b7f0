"""Named crash points for fault tests, after etcd's gofail and TiKV's fail-rs.

`UPKEEP_FAILPOINT=<name>` makes this process SIGKILL itself when it reaches that point: a real
kill -9, only its timing is chosen, so crash-and-resume tests are deterministic. Unset (always, in
production) a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "UPKEEP_FAILPOINT"


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def failpoint_soon(name: str, seconds: float) -> None:
    """Crash `seconds` from now, whatever the process is doing then (e.g. waiting on a remote command)."""
    if os.environ.get(ENV) == name:
        timer = threading.Timer(seconds, os.kill, args=(os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
