"""Ansible callback for bench/fleet.py: seconds from the play's start to its stats, written as JSON to
$BENCH_TIMING_FILE (Ansible's own start-up - imports, inventory, forks - is outside, as for the others)."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: benchtime
    type: aggregate
    short_description: play wall time for the fleet benchmark
    description:
      - Writes the play wall time and the failed hosts as JSON to the file named by BENCH_TIMING_FILE.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "benchtime"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.started: float | None = None

    def v2_playbook_on_play_start(self, play: object) -> None:
        self.started = time.monotonic()

    def v2_playbook_on_stats(self, stats: object) -> None:
        seconds = time.monotonic() - (self.started or time.monotonic())
        failed = sorted(
            host
            for host, count in {**stats.failures, **stats.dark}.items()  # type: ignore[attr-defined]
            if count
        )
        path = os.environ.get("BENCH_TIMING_FILE")
        if path:
            with open(path, "w") as fh:
                json.dump({"fleet_seconds": seconds, "failed_hosts": failed}, fh)
