"""Upkeep as a user starts it on one machine: `upkeep dispatch --max-running K`, in this process.

    UPKEEP_HOME=... PREFECT_API_URL=... .venv/bin/python bench/upkeep_tick.py --max-running K

Runs the real CLI command (`upkeep.cli.main` with argv `dispatch --max-running K --json`): one
dispatcher tick starts every due planned run through the product-update flow, in this process. The
only addition is measurement: the tick (the `dispatch` flow call, from the CLI asking for it to its
return) is timed by wrapping the flow object the CLI imports, and the process's peak RSS (VmHWM) is
read at the end. Prints one JSON line on stdout after the CLI's own output. (bench/fleet.py profiles
it from outside with py-spy, which sees every thread; the runs start in worker threads.)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

STARTED = time.monotonic()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sample_rss(samples: list[tuple[float, float]], stop: threading.Event) -> None:
    """RSS every 0.5 s during the tick: does memory follow the clusters done, or stay flat?"""
    while not stop.wait(0.5):
        samples.append((time.monotonic(), status_mb("VmRSS")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-running", type=int, required=True)
    args = parser.parse_args()

    import flows.dispatch
    from upkeep import cli

    timings: dict[str, Any] = {"imports_seconds": time.monotonic() - STARTED}
    flow = flows.dispatch.dispatch

    samples: list[tuple[float, float]] = []

    def timed(**kwargs: Any) -> Any:
        tick_started = time.monotonic()
        timings["before_tick_seconds"] = tick_started - STARTED
        timings["rss_before_tick_mb"] = status_mb("VmRSS")
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(samples, stop), daemon=True)
        sampler.start()
        try:
            return flow(**kwargs)
        finally:
            timings["tick_seconds"] = time.monotonic() - tick_started
            stop.set()
            sampler.join()
            # RSS at each quarter of the tick (MB): flat after the first quarter = not growing with C
            ends = [tick_started + timings["tick_seconds"] * q / 4 for q in (1, 2, 3, 4)]
            timings["rss_quarters_mb"] = [
                round(max((rss for at, rss in samples if at <= end), default=float("nan")), 1) for end in ends
            ]

    flows.dispatch.dispatch = timed  # type: ignore[assignment]  # the CLI imports it at call time
    sys.argv = ["upkeep", "dispatch", "--max-running", str(args.max_running), "--json"]
    code: Any = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    timings["exit_code"] = code
    timings["peak_rss_mb"] = status_mb("VmHWM")
    timings["process_seconds"] = time.monotonic() - STARTED
    sys.stdout.flush()
    print("\n" + json.dumps(timings))


if __name__ == "__main__":
    main()
