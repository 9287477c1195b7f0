"""No server a test started outlives the test process: `die_with_parent(argv)` is `argv` run so that
the kernel sends it SIGTERM when the process that started it ends, however it ends (kill -9 of a
pytest worker included, when no fixture's teardown runs). `argv` runs as Popen would run it (a name
without a slash is looked up on PATH); one that cannot run is one line on stderr and exit 127.

Linux's PR_SET_PDEATHSIG, set by a small `python -S -c` in the child that then execs `argv` (the
setting survives exec). Not `preexec_fn`: that is unsafe in a process with threads, and pytest's
workers have them. The signal comes when the *thread* that started the child ends; fixtures run in the
worker's main thread (pytest-xdist's execmodel is main_thread_only), which ends only with the worker, and
a call from any other thread is refused: its end would kill the server while the test still uses it.

Costs one `python -S` start (~15 ms) per server started.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1

_SHIM = (
    "import ctypes, os, signal, sys\n"
    f"if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM) != 0:\n"
    "    sys.exit(f'prctl(PR_SET_PDEATHSIG): errno {ctypes.get_errno()}')\n"
    # The parent may have ended before prctl: then nobody would ever signal this child.
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the process that started this one has ended')\n"
    # As Popen runs argv: the signals this Python ignored at its start back to their defaults (what
    # Popen's restore_signals gives a child; an ignored signal stays ignored across exec), and a name
    # without a slash looked up on the environment's PATH.
    "for name in ('SIGPIPE', 'SIGXFSZ'):\n"
    "    if hasattr(signal, name):\n"
    "        signal.signal(getattr(signal, name), signal.SIG_DFL)\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    print(f'cannot run {sys.argv[2]!r}: {exc.strerror}', file=sys.stderr)\n"
    "    sys.exit(127)\n"
)


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` as an argv that dies with this process; only from the main thread (see above)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "die_with_parent: call it from the main thread (the child would be killed when this thread ends)"
        )
    return [sys.executable, "-S", "-c", _SHIM, str(os.getpid()), *argv]
