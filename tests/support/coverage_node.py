"""Measure what runs on the lab's nodes: `make coverage` sets UPKEEP_LAB_NODE_PYTHON to a two-line
shell wrapper that runs this file with the venv's Python, so the node agent (upkeep/lab/agent.py) and
the tunnel server's forced command (tasks/tunnel_sessions.py) are measured where they really run.

Those run as `python3 -I -S <lab>/agent.py ...` under sshd, whose sessions carry none of coverage.py's
environment, so its subprocess patch cannot reach them. This wrapper:
- drops `-I` and `-S` (the venv's Python needs its site-packages to import coverage; the agent itself
  uses only the standard library, and every run of `make test` still proves that with `-I -S`);
- runs the repository's copy of the script instead of the lab's byte-identical copy, so the lines are
  reported against upkeep/lab/agent.py and tasks/tunnel_sessions.py;
- writes a parallel data file next to the run's: <checkout>/.coverage.* (sshd passes no COVERAGE_FILE;
  `make coverage` sets it to <checkout>/.coverage, and UPKEEP_COVERAGE_FILE overrides this default).

Anything else is run as it was asked, unmeasured. The supervisor the agent re-executes for a tunnel
(`sys.executable -I -S agent.py tunnel _supervise`) runs unmeasured too.
"""

from __future__ import annotations

import filecmp
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEASURED = {
    "agent.py": REPO / "upkeep" / "lab" / "agent.py",
    "tunnel_sessions.py": REPO / "tasks" / "tunnel_sessions.py",
}


def main() -> None:
    args = sys.argv[1:]
    while args and args[0] in ("-I", "-S"):  # the interpreter's flags, before the script; not its args
        args = args[1:]
    if not args:
        raise SystemExit("usage: coverage_node.py [-I] [-S] SCRIPT [ARGS...]")
    script, rest = Path(args[0]), args[1:]
    source = MEASURED.get(script.name)
    if source is None or not script.is_file() or not filecmp.cmp(script, source, shallow=False):
        os.execv(sys.executable, [sys.executable, "-I", "-S", str(script), *rest])
    import coverage

    cov = coverage.Coverage(
        data_file=os.environ.get("UPKEEP_COVERAGE_FILE", str(REPO / ".coverage")),
        data_suffix=True,
        branch=True,
        include=[str(source)],
        config_file=False,
    )
    cov.set_option("run:sigterm", True)  # a node's upgrade or supervisor may end by SIGTERM
    sys.argv = [str(source), *rest]
    cov.start()
    try:
        runpy.run_path(str(source), run_name="__main__")
    finally:
        cov.stop()
        cov.save()


if __name__ == "__main__":
    main()
