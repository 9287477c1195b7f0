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
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

STARTED = time.monotonic()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def status_int(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def open_fds() -> int:
    try:
        return len(list(Path("/proc/self/fd").iterdir()))
    except OSError:
        return 0


def sample_rss(samples: list[tuple[float, float]], stop: threading.Event, peaks: dict[str, int]) -> None:
    """RSS every 0.5 s during the tick: does memory follow the clusters done, or stay flat? Also the
    peak number of threads and open file descriptors (K clusters in flight: SSH transports, sockets)."""
    while not stop.wait(0.5):
        samples.append((time.monotonic(), status_mb("VmRSS")))
        peaks["threads"] = max(peaks.get("threads", 0), status_int("Threads"))
        peaks["fds"] = max(peaks.get("fds", 0), open_fds())


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def count_api(counts: Counter[str]) -> None:
    """Count every request this process sends to the Prefect API (`METHOD /path`, ids as {id}) and
    every event it emits (they go over a websocket, batched): the round trips per cluster."""
    import httpx
    from prefect.events.worker import EventsWorker

    def key(request: httpx.Request) -> str:
        path = _ID.sub("{id}", request.url.path).removeprefix("/api")
        return f"{request.method} {path}"

    sync_send, async_send, emit = httpx.Client.send, httpx.AsyncClient.send, EventsWorker.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        counts[key(request)] += 1
        return sync_send(self, request, **kwargs)

    async def asend(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        counts[key(request)] += 1
        return await async_send(self, request, **kwargs)

    def event(self: Any, item: Any) -> Any:
        counts[f"event {getattr(item, 'event', '?')}"] += 1
        return emit(self, item)

    httpx.Client.send = send  # type: ignore[method-assign]
    httpx.AsyncClient.send = asend  # type: ignore[method-assign]
    EventsWorker.send = event  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-running", type=int, required=True)
    parser.add_argument("--count-api", action="store_true", help="count Prefect API requests and events")
    args = parser.parse_args()
    api: Counter[str] = Counter()
    if args.count_api:
        count_api(api)

    import flows.dispatch
    from upkeep import cli

    timings: dict[str, Any] = {"imports_seconds": time.monotonic() - STARTED}
    flow = flows.dispatch.dispatch

    samples: list[tuple[float, float]] = []
    peaks: dict[str, int] = {}

    def timed(**kwargs: Any) -> Any:
        tick_started = time.monotonic()
        timings["before_tick_seconds"] = tick_started - STARTED
        timings["rss_before_tick_mb"] = status_mb("VmRSS")
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(samples, stop, peaks), daemon=True)
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
    if args.count_api:
        timings["api"] = dict(api.most_common())
    timings["peak_threads"] = peaks.get("threads", 0)
    timings["peak_fds"] = peaks.get("fds", 0)
    timings["process_seconds"] = time.monotonic() - STARTED
    sys.stdout.flush()
    print("\n" + json.dumps(timings))


if __name__ == "__main__":
    main()
