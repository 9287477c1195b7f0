"""One regression test per bug the fault suite found (each fixed in its own commit; the commit says why).
Example-based and quick; the property or scenario that found the bug stays in its own module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cli import CliHome, cli_home, invoke

pytestmark = [pytest.mark.faults]


@pytest.fixture
def empty_home(tmp_path: Path) -> Iterator[CliHome]:
    with cli_home(tmp_path / "home", None) as home:
        yield home


@pytest.mark.parametrize(
    "args",
    [("show", "x"), ("runs", "--limit", "abc"), ("update",), ("update", "c1", "--bogus"), ("resume", "1.5")],
)
def test_usage_errors_are_a_usage_message_and_exit_2_not_a_traceback(
    args: tuple[str, ...], empty_home: CliHome
) -> None:
    """Typer >= 0.2x raises its own copy of Click's exceptions; `upkeep.cli.main` caught only Click's."""
    result = invoke(*args)
    assert result.code == 2, result.text
    assert "Usage: upkeep" in result.stderr and "Traceback" not in result.text
