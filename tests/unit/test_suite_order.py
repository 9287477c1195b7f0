"""tests/conftest.py's LONGEST_FIRST names test files by path: a file renamed or removed would silently
lose its place at the front (nothing is skipped; the long file just starts late again, as before #20)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONGEST_FIRST

ROOT = Path(__file__).resolve().parents[2]


def test_every_file_run_first_exists_once() -> None:
    missing = [path for path in LONGEST_FIRST if not (ROOT / path).is_file()]
    assert not missing, f"LONGEST_FIRST names files that are not there: {missing}"
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
