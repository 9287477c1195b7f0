"""The one way tests build a lab: `running_lab(root, ...)` starts it, ties it to this test process (a
watchdog stops it if the process dies, even by kill -9) and stops it at the end; `take_cluster(lab)`
hands out a cluster no earlier test of this process has touched.

A lab is a few hundred sshd daemons; they daemonize, so they outlive the process that started them. The
watchdog (`python -m tests.support.labs ROOT`) is a process of its own session that reads a pipe from
the test process: when that process is gone, for whatever reason, the pipe reads end-of-file and the
watchdog stops the lab's daemons (and with them the agents running under their sessions).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_taken: dict[str, int] = {}


@contextlib.contextmanager
def running_lab(root: Path, **up: Any) -> Iterator[Any]:
    """`Lab(root).up(**up)`, guarded by a watchdog, stopped when the block ends."""
    from upkeep.lab import Lab

    lab = Lab(root)
    with guarded(lab):
        lab.up(**up)
        yield lab


@contextlib.contextmanager
def guarded(lab: Any) -> Iterator[Any]:
    """Stop `lab` when the block ends, or when this process dies before it does."""
    watchdog = watch(lab.root)
    try:
        yield lab
    finally:
        try:
            lab.down()
        finally:
            assert watchdog.stdin is not None
            watchdog.stdin.close()  # the watchdog finds nothing left running and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=30)


def watch(root: Path) -> subprocess.Popen[bytes]:
    """Start the watchdog of the lab at `root`; it acts once this process's end of its pipe closes."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.labs", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,  # a kill of pytest's process group must not take the watchdog with it
    )


def take_cluster(lab: Any) -> str:
    """A cluster of `lab` that no earlier test of this process has touched."""
    clusters = list(dict.fromkeys(node["cluster"] for node in lab.status()["nodes"]))
    key = str(lab.root)
    number = _taken[key] = _taken.get(key, 0) + 1
    if number > len(clusters):
        pytest.fail(f"the lab at {lab.root} has only {len(clusters)} clusters; give it more")
    return clusters[number - 1]


def clusters_needed(session: pytest.Session, *fixtures: str, spare: int = 2) -> int:
    """How many clusters the collected tests take: one for each of `fixtures` a test asks for, plus a
    spare or two."""
    return spare + sum(
        fixture in getattr(item, "fixturenames", ()) for item in session.items for fixture in fixtures
    )


def nodes_of(lab: Any, cluster: str) -> list[dict[str, Any]]:
    return [node for node in lab.status()["nodes"] if node["cluster"] == cluster]


def _watchdog(root: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal: pytest tears down itself
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    from upkeep.lab import Lab

    Lab(root).down()


if __name__ == "__main__":
    _watchdog(sys.argv[1])
