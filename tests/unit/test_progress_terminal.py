"""Live progress (upkeep/progress.py) on terminals that cannot redraw (adversarial pass on #16)."""

from __future__ import annotations

import io

from rich.console import Console

from upkeep.progress import EventBoard, watch


def _console(term: str) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, _environ={"TERM": term}), out


def test_a_dumb_terminal_gets_a_line_per_event_not_a_table_shown_only_at_the_end() -> None:
    # TERM=dumb (Emacs shell, some CI consoles): Rich's Live cannot move the cursor there and draws
    # nothing until it stops, so the SRE saw no progress at all while the update ran.
    console, out = _console("dumb")
    board = EventBoard("case-7")
    with watch(board, console=console):
        board.event("n1", "collect", "started")
        board.event("n1", "collect", "failed", "disk full")
    text = out.getvalue()
    assert "case-7 n1 collect started" in text, text
    assert "case-7 n1 collect failed" in text and "disk full" in text, text
    assert "elapsed" not in text, text  # no table drawn at the end instead


def test_a_real_terminal_still_gets_the_live_table() -> None:
    console, out = _console("xterm-256color")
    board = EventBoard("case-7")
    with watch(board, console=console):
        board.event("n1", "collect", "started")
    assert "elapsed" in out.getvalue()
    assert "case-7 n1 collect started" not in out.getvalue()
