"""The suite's own guarantees: a lab started by a test process dies with it, even by kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upkeep.lab import procs

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]

STARTER = """
import sys, time
from pathlib import Path
from tests.support.labs import running_lab
with running_lab(Path(sys.argv[1]), clusters=1, nodes=2, upgrade_seconds=0.1, health_delay=0.1):
    print("up", flush=True)
    time.sleep(600)
"""


def _wait_until(condition, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def test_a_lab_dies_with_the_test_process_that_started_it_even_by_kill_9(tmp_path: Path) -> None:
    root = tmp_path / "orphaned-lab"
    test_process = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert test_process.stdout is not None
        assert test_process.stdout.readline().strip() == "up"
        state = json.loads((root / "lab.json").read_text())
        daemons = [
            pid
            for pidfile in [root / "fileserver" / "nginx.pid", root / "jump" / "sshd.pid"]
            + [root / "nodes" / node["hostname"] / "sshd" / "sshd.pid" for node in state["nodes"]]
            for pid in [int(pidfile.read_text().split()[0])]
        ]
        assert len(daemons) == 4 and all(procs.alive(pid) for pid in daemons)
        os.kill(test_process.pid, signal.SIGKILL)
        test_process.wait(timeout=30)
        _wait_until(lambda: not any(procs.alive(pid) for pid in daemons), "the lab's daemons to stop")
    finally:
        if test_process.poll() is None:
            test_process.kill()
        from upkeep.lab import Lab

        Lab(root).down()
