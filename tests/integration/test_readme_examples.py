"""README's support-case example, copied as written: open the case with the id the README shows, then
request the update that names it, against the lab. (`CASE-` ids are Upkeep's own numbering, so an
example that opened `--id CASE-12` was refused; the README now uses an external id.)"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab
README = Path(__file__).resolve().parents[2] / "README.md"


def _example(pattern: str) -> str:
    """The README line starting with `pattern`, optional `[...]` parts and the comment removed."""
    text = README.read_text()
    match = re.search(rf"^{re.escape(pattern)}.*$", text, re.MULTILINE)
    assert match, f"README.md has no line starting with {pattern!r}"
    line = re.sub(r"\s+#.*$", "", match[0])
    return re.sub(r"\s*\[[^\]]*\]", "", line).strip()


def test_the_readme_case_example_runs_as_written(lab: Any, tmp_path: Path) -> None:
    opened = _example("upkeep case open")
    requested = _example("upkeep request acme-c1 --to 9.10.0 --source support --case")
    case_id = shlex.split(opened)[shlex.split(opened).index("--id") + 1]
    assert f"--case {case_id}" in requested, "the README's request must name the case it opens"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in lab.settings_overrides().items()})
    env.update(
        {"UPKEEP_HOME": str(tmp_path / "home"), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    )
    script = "\n".join(
        [
            "set -euo pipefail",
            f"upkeep inventory import {shlex.quote(str(lab.inventory_path))} >/dev/null",
            opened,
            requested,
        ]
    )
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert case_id in done.stdout and "scheduled" in done.stdout, done.stdout
