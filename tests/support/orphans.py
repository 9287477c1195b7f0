"""No server a test started outlives the test process: `die_with_parent(argv)` is `argv` run so that
the kernel sends it SIGTERM when the process that started it ends, however it ends (kill -9 of a
pytest worker included, when no fixture's teardown runs).

Linux's PR_SET_PDEATHSIG, set by a small `python -S -c` in the child that then execs `argv` (the
setting survives exec). Not `preexec_fn`: that is unsafe in a process with threads, and pytest's
workers have them. The signal comes when the *thread* that started the child ends; fixtures run in the
worker's main thread, which ends only with the worker.

Costs one `python -S` start (~15 ms) per server started.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1

_SHIM = (
    "import ctypes, os, signal, sys\n"
    f"if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM) != 0:\n"
    "    sys.exit(f'prctl(PR_SET_PDEATHSIG): errno {ctypes.get_errno()}')\n"
    # The parent may have ended before prctl: then nobody would ever signal this child.
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the process that started this one has ended')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` (its first item an absolute path to the program) as an argv that dies with this process."""
    return [sys.executable, "-S", "-c", _SHIM, str(os.getpid()), *argv]
