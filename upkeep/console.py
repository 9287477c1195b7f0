"""Shared terminal output: one Rich console for tables, plain stdout for --json, errors on stderr.

With `--json` anywhere on the command line, `upkeep.cli.main` writes every error (a refusal, a usage
error, an unexpected one) as `{"error": "...", "exit": N}` on stdout instead of a line on stderr:
commands only raise `CliError`, they never format their own errors."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from rich.console import Console

# Made once per process from its environment (colour, width); ":100:" in FILE:LINE is not an emoji.
CONSOLE_OPTIONS: dict[str, Any] = {"highlight": False, "emoji": False}
console = Console(**CONSOLE_OPTIONS)
err_console = Console(stderr=True, **CONSOLE_OPTIONS)

# Set by upkeep.cli.main from the command line; `printed` once a JSON document went to stdout.
output = {"json": False, "printed": False}


def fit_output_to_its_encoding() -> None:
    """An output that cannot hold all of Unicode (PYTHONIOENCODING=ascii, an old locale, a Latin-1 pipe)
    or that refuses what it cannot encode (PYTHONIOENCODING=utf-8 and a name that is not UTF-8, which
    Python holds as a lone surrogate) gets what it cannot hold replaced ("?") instead of failing
    mid-table; --json escapes it instead (`print_json`), so JSON stays lossless. stderr already
    replaces (Python's backslashreplace)."""
    if not stdout_holds_unicode() or getattr(sys.stdout, "errors", None) == "strict":
        with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper, or closed
            sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]


def stdout_holds_unicode() -> bool:
    return _stdout_holds("\u2026\u2500\U0001f600")


def _stdout_holds(text: str) -> bool:
    """Whether stdout's encoding holds `text` as it is, with no error handler's help (a lone surrogate
    written by surrogateescape is a byte that is not UTF-8: no JSON reader takes it)."""
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _json_text(data: Any, **options: Any) -> str:
    """`data` as JSON that stdout holds exactly: as it is when it can, else escaped to ASCII."""
    text = json.dumps(data, ensure_ascii=False, **options)
    return text if _stdout_holds(text) else json.dumps(data, ensure_ascii=True, **options)


def print_json(data: Any) -> None:
    if sys.stdout is None:  # started with it closed (`>&-`)
        raise CliError("standard output is closed: nowhere to write the answer")
    sys.stdout.write(_json_text(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
    output["printed"] = True


def json_mode() -> bool:
    return bool(output["json"])


def report_error(message: str, code: int) -> None:
    """The one place an error reaches the user: `{"error", "exit"}` on stdout with --json (unless the
    command already wrote its JSON document there: then the line goes to stderr, so stdout stays one
    document), else `error: ...` on stderr."""
    if output["json"] and not output["printed"] and sys.stdout is not None:
        sys.stdout.write(_json_text({"error": message, "exit": code}) + "\n")
        sys.stdout.flush()
        output["printed"] = True
        return
    from rich.markup import escape

    err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)


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
