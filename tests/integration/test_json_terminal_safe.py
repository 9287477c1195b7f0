"""--json prints stored text (a reason, a name) escaped where a terminal would act on it: a bidi override
(U+202E: 'fine\u202etxt.exe' shows as 'fineexe.txt'), a C1 control (U+009B, a one-character CSI) or an
isolate printed as they are let whoever wrote the value rearrange or drive the SRE's terminal that shows
the JSON (`upkeep show 1 --json`). JSON is for machines: its \\uXXXX escape reads back to the exact value,
and text a terminal only shows (accents, other scripts) stays as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import upkeep_here

HOSTILE = "fine\u202etxt.exe \x1b]0;owned\x07 \x9b2J \u2066iso\u2069 \u200b \x7f \U000e0041 Zürich ✓"


def _terminal_safe(out: str) -> None:
    unsafe = sorted({f"U+{ord(ch):04X}" for ch in out if not (ch.isprintable() or ch == "\n")})
    assert not unsafe, unsafe


@pytest.fixture
def home(tmp_path: Path) -> Path:
    from tests.integration.test_calendar_cli import INVENTORY

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    assert upkeep_here(home, "inventory", "import", str(fleet)).returncode == 0
    assert upkeep_here(home, "request", "acme-c1", "--to", "9.9.0", "--source", "customer").returncode == 0
    cancelled = upkeep_here(home, "cancel", "1", "--reason", HOSTILE)
    assert cancelled.returncode == 0, cancelled.stderr
    return home


def test_show_json_escapes_a_stored_reasons_bidi_and_control_characters(home: Path) -> None:
    done = upkeep_here(home, "show", "1", "--json")

    assert done.returncode == 0, done.stderr
    _terminal_safe(done.stdout)
    assert HOSTILE in json.loads(done.stdout)["reason"]  # the exact value, read back
    assert "Zürich ✓" in done.stdout  # printable text is not escaped


def test_runs_json_escapes_them_too(home: Path) -> None:
    done = upkeep_here(home, "runs", "--json")

    assert done.returncode == 0, done.stderr
    _terminal_safe(done.stdout)
    [run] = json.loads(done.stdout)
    assert HOSTILE in run["reason"], run


@pytest.mark.parametrize("tail", ["", " \ud800"], ids=["text", "undecodable-byte"])
def test_print_json_reads_back_exactly(capsys: pytest.CaptureFixture[str], tail: str) -> None:
    """The one writer of --json (`print_json`; the JSON error line goes through the same text); a lone
    surrogate (a name's byte that is not UTF-8) escaped as well, as it always was."""
    from upkeep.console import print_json

    value = HOSTILE + " \u2028 \u00a0" + tail
    print_json({"customer": value, "nested": [value]})
    out = capsys.readouterr().out
    _terminal_safe(out)
    assert json.loads(out) == {"customer": value, "nested": [value]}
