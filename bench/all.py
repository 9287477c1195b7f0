"""Everything `make bench` runs, in order, with the results written to bench/results.md.

    .venv/bin/python bench/all.py [options for bench/fleet.py, e.g. --reps 1 --workloads W1]

1. bench/fleet.py - Upkeep vs the bare-SSH floor vs Ansible on the lab (its own block in results.md);
2. bench/plan_month.py --clusters 10000 - if present (a colleague's: the month's cloud-release plan);
3. bench/notices.py -n 10000 - notices rendered, queued and delivered to a local SMTP server;
4. bench/dispatch_tick.py - one dispatcher tick over 1,000 / 10,000 / 100,000 planned updates on
   PostgreSQL (its own block in results.md too).

Each runs as its own process, its output shown as it comes; their last lines are collected into the
"other benchmarks" block of results.md. The exit status is non-zero if any of them failed (the others
still run).
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
START, END = "<!-- others: written by bench/all.py -->", "<!-- /others -->"


def run(cmd: list[str]) -> tuple[int, str, float]:
    """Run `cmd`, echoing its output; (exit status, last non-empty line, seconds)."""
    print(f"\n$ {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    last = ""
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            if line.strip():
                last = line.strip()
    return proc.returncode, last, time.monotonic() - started


def write_others(lines: list[str]) -> None:
    block = "\n".join([START, "", "```", *lines, "```", "", END])
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    python = sys.executable
    failed = []
    finals: list[str] = [f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"]
    code, _, seconds = run([python, str(HERE / "fleet.py"), *sys.argv[1:]])
    finals.append(f"# fleet bench: {seconds:.0f} s (exit {code}); its lines are in the block above")
    if code:
        failed.append("fleet")
    plan = HERE / "plan_month.py"
    if plan.exists():
        code, last, seconds = run([python, str(plan), "--clusters", "10000"])
        finals.append(f"{last}  # {seconds:.0f} s with start-up, exit {code}")
        if code:
            failed.append("plan_month")
    else:
        finals.append("# plan_month: bench/plan_month.py not present, skipped")
    code, last, seconds = run([python, str(HERE / "notices.py"), "-n", "10000"])
    finals.append(f"{last}  # {seconds:.0f} s with start-up, exit {code}")
    if code:
        failed.append("notices")
    code, last, seconds = run([python, str(HERE / "dispatch_tick.py")])
    finals.append(f"{last}  # {seconds:.0f} s with loading the data, exit {code}")
    if code:
        failed.append("dispatch_tick")
    write_others(finals)
    print("\n" + "\n".join(line for line in finals if not line.startswith("#")))
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
