"""`upkeep tunnel status` input from a hostile or careless operator: one clear line naming the value, the
usage exit code, nothing probed (adversarial pass on #18). Runs the real CLI with an empty home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _upkeep(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env["UPKEEP_HOME"] = str(home)
    command = [str(Path(sys.executable).parent / "upkeep"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("within", ["1e308", "inf", "100000"])
def test_a_within_beyond_a_year_is_a_usage_error_not_a_bug(tmp_path: Path, within: str) -> None:
    # 'now + within' overflowed the datetime ('unexpected OverflowError ... this is a bug in Upkeep', exit 1);
    # no update is planned more than 72 h ahead, so a year is more than any use.
    done = _upkeep(tmp_path, "tunnel", "status", "--within", within, "--json")
    assert done.returncode == 2, done
    said = json.loads(done.stdout)
    assert said["exit"] == 2 and "--within" in said["error"] and "bug" not in said["error"], said
    plain = _upkeep(tmp_path, "tunnel", "status", "--within", within)
    assert plain.returncode == 2 and "--within" in plain.stderr and "Traceback" not in plain.stderr, plain
