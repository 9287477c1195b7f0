"""tests/support/coverage_node.py, the interpreter `make coverage` gives the lab's nodes: what it does
not measure it runs exactly as asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE_PYTHON = [sys.executable, str(REPO / "tests" / "support" / "coverage_node.py")]


def test_a_script_it_does_not_measure_gets_every_argument_even_ones_that_look_like_its_flags(
    tmp_path: Path,
) -> None:
    """Only the interpreter's own -I and -S (before the script) are the wrapper's to drop."""
    script = tmp_path / "other.py"
    script.write_text("import sys\nprint(sys.argv[1:])\n")
    done = subprocess.run(
        [*NODE_PYTHON, "-I", "-S", str(script), "-S", "-I", "x"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "['-S', '-I', 'x']\n", "")


def test_no_script_is_a_usage_line() -> None:
    done = subprocess.run([*NODE_PYTHON, "-I", "-S"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "usage: coverage_node.py [-I] [-S] SCRIPT [ARGS...]\n"
