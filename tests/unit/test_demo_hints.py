"""The demo's final hints are pasted into a shell: what they run must read the demo's records, whatever
the operator's environment holds (README's production setup exports UPKEEP_DATABASE_URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from upkeep.demo import hint_env
from upkeep.settings import mask_url


def test_a_pasted_hint_reads_the_demos_home_and_database_whatever_the_shell_exports(tmp_path: Path) -> None:
    demo = tmp_path / "it's a demo $HOME" / "demo"  # a quote, a space and a '$' in the checkout's path
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith("UPKEEP_")}
    env |= {
        "UPKEEP_HOME": str(tmp_path / "production"),
        "UPKEEP_DATABASE_URL": "postgresql+psycopg://upkeep@db.example/upkeep",  # as README exports it
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    pasted = f"{hint_env(demo)} {sys.executable} -m upkeep settings --json"
    shown = subprocess.run(
        ["bash", "-c", pasted], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    settings = json.loads(shown.stdout)
    assert settings["home"] == str(demo)
    assert settings["database_url"] == mask_url(f"sqlite:///{demo / 'upkeep.db'}")  # not the exported one
