"""How many lab nodes this machine holds: a short, small probe before W4 (bench/fleet.py).

    .venv/bin/python bench/lab_probe.py [--clusters 10] [--work DIR]

Starts a lab of C clusters x 3 nodes (real sshds), measures how long it took, the memory its node
processes take (PSS: shared pages split between the sshds), one node agent's memory while it sleeps
through an upgrade, and reads what the machine has left (MemAvailable, open-file and process limits).
From those it computes how many nodes would fit in half of the available memory, with K clusters
each holding one sleeping agent and 3 SSH sessions - computed, not started. The lab is taken down.
Last line: `lab_probe nodes=N mb_per_node=M holds_clusters=K (computed)`.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from upkeep.lab import Lab  # noqa: E402
from upkeep.lab.procs import descendants  # noqa: E402


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "upkeep-lab-probe"
    )
    args = parser.parse_args()
    lab = Lab(args.work)
    lab.down()
    available_before = mem_available_mb()
    started = time.monotonic()
    lab.up(clusters=args.clusters, nodes=3, upgrade_seconds=0.0, health_delay=0.0)
    up_seconds = time.monotonic() - started
    try:
        nodes = [n for n in lab.status()["nodes"] if n["pid"]]
        node_mb = sum(pss_mb(n["pid"]) + sum(pss_mb(c) for c in descendants(n["pid"])) for n in nodes)
        # One node agent (a python3 process) as it sits in an upgrade: started like the lab's sshd
        # runs it, asked only for its version, its memory read while it runs a short sleep instead.
        agent = subprocess.Popen(
            [sys.executable, "-c", "import json, pathlib, subprocess, time; time.sleep(2)"],
        )
        time.sleep(1.0)
        agent_mb = pss_mb(agent.pid) or 8.0
        agent.wait()
        available = mem_available_mb()
        per_node = node_mb / max(len(nodes), 1)
        # In flight, per cluster: 3 nodes, one agent asleep in its upgrade, 3 SSH sessions (a forked
        # sshd each, about one node's worth again).
        per_cluster = 3 * per_node * 2 + agent_mb
        holds = int(0.5 * available / per_cluster)
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(
            f"lab of {args.clusters} x 3 = {len(nodes)} nodes up in {up_seconds:.1f} s; nodes' PSS "
            f"{node_mb:.0f} MB ({per_node:.1f} MB per node); a sleeping agent {agent_mb:.1f} MB; "
            f"MemAvailable {available_before:.0f} MB before, {available:.0f} MB now; open files limit "
            f"{soft} (the Upkeep process needs ~3 per cluster in flight plus its database connections); "
            f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
        print(
            f"lab_probe nodes={len(nodes)} mb_per_node={per_node:.1f} holds_clusters={holds} (computed: "
            f"half of MemAvailable / {per_cluster:.1f} MB per cluster in flight)"
        )
    finally:
        lab.down()


if __name__ == "__main__":
    main()
