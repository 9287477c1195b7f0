"""Shared terminal output: one Rich console for tables, plain stdout for --json, errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(highlight=False, emoji=False)  # ":100:" in FILE:LINE is not an emoji
err_console = Console(stderr=True, highlight=False, emoji=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


class CliError(Exception):
    """A refusal to show the user as one clear line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# `upkeep --verbose ...` (or UPKEEP_VERBOSE=1): tracebacks, ours and Prefect's tasks', are shown.
verbosity = {"verbose": False}


def verbose() -> bool:
    import os

    return verbosity["verbose"] or os.environ.get("UPKEEP_VERBOSE", "") not in ("", "0")
