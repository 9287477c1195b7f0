"""Shared terminal output: one Rich console for tables, plain stdout for --json, errors on stderr.

With `--json` anywhere on the command line, `upkeep.cli.main` writes every error (a refusal, a usage
error, an unexpected one) as `{"error": "...", "exit": N}` on stdout instead of a line on stderr:
commands only raise `CliError`, they never format their own errors.

A reader that stops early (`upkeep runs | head -1`, `upkeep inventory show --json | less` quit at
once) is no error: the first write that finds the pipe closed points stdout at /dev/null, and the
command goes on to its end as if its output had been read, so what it writes to the database (and
whether it fails) never depends on who reads it. Its work done, `upkeep.cli.main` ends it as git and
coreutils end there: killed by SIGPIPE (a shell's status 141, which `set -o pipefail` sees), nothing on
stderr; a command that failed keeps its own error and exit status. Python's own recipe (stdout to
/dev/null, then exit 1) would make a reader's `head` look like a refusal, which exit 1 means here."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import sys
from typing import Any

from rich.console import Console


class _WholeWrites:
    """A text stream whose `write` puts all of the text on its file descriptor or raises (BrokenPipeError
    when the reader is gone). CPython's BufferedWriter (3.11) takes a large write that a closing pipe
    cut short (write(2) returned a part) as done: the rest is dropped and no error is raised, so a
    command could not tell that its reader went away."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file's stream (a test's capture)
            return int(self._stream.write(text))
        data = memoryview(text.encode(self._stream.encoding or "utf-8", self._stream.errors or "strict"))
        with _stdout_failures():
            self._stream.flush()  # what went through the stream itself goes first
            while data:
                try:
                    data = data[os.write(fd, data) :]
                except BlockingIOError:  # O_NONBLOCK, set by whoever made the pipe: its reader lags
                    select.select([], [fd], [])  # writable again, or its reader gone (then EPIPE)
        return len(text)

    def flush(self) -> None:
        with _stdout_failures():
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _stdout_failures() -> Any:
    """A write to stdout that fails other than by its reader going away (ENOSPC: `> /dev/full`, a full
    disk; EIO; EBADF) is the operator's to fix, one line on stderr, not "unexpected OSError ... a bug".
    As with a closed pipe, the command goes on to its end (what it does never depends on where its
    output goes) with stdout on /dev/null; `upkeep.cli.main` then ends a command that succeeded with
    this error (exit 1); a command that failed keeps its own, said on stderr."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        if not output["stdout_failed"]:
            output["stdout_failed"] = f"cannot write to standard output: {exc.strerror or exc}"
        console.quiet = True
        _stdout_to_devnull()


class _NoStdout:
    """Rich's stand-in for a stdout that was closed when the process started (`>&-`, sys.stdout None):
    Rich wrote to its NULL_FILE, so a table went nowhere and the command said 0. What is written is
    noted, not refused (a line printed mid-command must not stop its work), and `upkeep.cli.main` ends
    a command that succeeded with print_json's refusal (exit 1)."""

    def write(self, text: str) -> int:
        output["stdout_missing"] = True
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _Console(Console):
    """Rich's console, writing stdout whole (`_WholeWrites`) and answering a closed pipe as this module's
    docstring says (Rich's own answer is SystemExit(1), from wherever the print was)."""

    @property
    def file(self) -> Any:
        file = Console.file.fget(self)  # type: ignore[attr-defined]
        if not self.stderr and sys.stdout is None and self._file is None:
            return _NoStdout()
        return _WholeWrites(file) if file is sys.stdout else file

    @file.setter
    def file(self, new_file: Any) -> None:
        Console.file.fset(self, new_file)  # type: ignore[attr-defined]

    def on_broken_pipe(self) -> None:
        del self._buffer[:]
        self.quiet = True
        if not self.stderr:
            stdout_closed()
        # stderr's reader gone: nobody is left to tell; the exit status still says how it ended


# Made once per process from its environment (colour, width); ":100:" in FILE:LINE is not an emoji.
CONSOLE_OPTIONS: dict[str, Any] = {"highlight": False, "emoji": False}
console = _Console(**CONSOLE_OPTIONS)
err_console = _Console(stderr=True, **CONSOLE_OPTIONS)

# Set by upkeep.cli.main from the command line; `printed` once a JSON document went to stdout;
# `stdout_closed` once a write found stdout's reader gone.
output: dict[str, bool | str] = {
    "json": False,
    "printed": False,
    "stdout_closed": False,
    "stdout_failed": False,  # or why a write to it failed (`_stdout_failures`)
    "stdout_missing": False,
}


def stdout_closed() -> None:
    """Stdout's reader is gone: from now on stdout is /dev/null (nothing more fails, Python's flush at
    exit included) and the console prints nothing; `upkeep.cli.main` ends the command by SIGPIPE."""
    output["stdout_closed"] = True
    console.quiet = True
    _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


STDOUT_MISSING = "standard output is closed: nowhere to write the answer"  # `>&-`


def write_stdout(text: str) -> None:
    """`text` on stdout, whole; a reader gone is `stdout_closed()`, not an error."""
    if sys.stdout is None:  # started with it closed (`>&-`)
        raise CliError(STDOUT_MISSING)
    if output["stdout_closed"] or output["stdout_failed"]:
        return
    stdout = _WholeWrites(sys.stdout)
    try:
        stdout.write(text)
        stdout.flush()
    except BrokenPipeError:
        stdout_closed()


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
    """`data` as JSON that stdout holds exactly: as it is when it can, else escaped to ASCII; either way
    with no character a terminal acts on rather than shows (`_terminal_safe`)."""
    text = _terminal_safe(json.dumps(data, ensure_ascii=False, **options))
    return text if _stdout_holds(text) else json.dumps(data, ensure_ascii=True, **options)


# What may not be printable: all but printable ASCII and the newlines of `indent` (json.dumps escapes
# every C0 control inside a string, so a raw newline is layout).
_MAYBE_UNSAFE = re.compile(r"[^\n\x20-\x7e]")


def _terminal_safe(text: str) -> str:
    """JSON `text` with each character that is not printable (str.isprintable: a bidi override or isolate
    such as U+202E, a C1 control such as U+009B, DEL, a zero-width or line separator, a lone surrogate) as
    its \\uXXXX escape (a surrogate pair above U+FFFF): a stored value (a reason, a name) shown by --json
    rearranged or drove the SRE's terminal, and json.dumps escapes only C0 controls. Any JSON reader reads
    the escape back to the exact value; printable text (accents, other scripts) stays readable."""

    def escape(found: re.Match[str]) -> str:
        char = found.group()
        if char.isprintable():
            return char
        code = ord(char)
        if code > 0xFFFF:
            code -= 0x10000
            return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
        return f"\\u{code:04x}"

    return _MAYBE_UNSAFE.sub(escape, text)


def print_json(data: Any) -> None:
    text = _json_text(data, indent=2, default=str) + "\n"
    # Before the first byte: an error while it is written (Ctrl-C, its reader slow) goes to stderr, not
    # into the middle of the document.
    output["printed"] = True
    write_stdout(text)


def json_mode() -> bool:
    return bool(output["json"])


def report_error(message: str, code: int) -> None:
    """The one place an error reaches the user: `{"error", "exit"}` on stdout with --json (unless the
    command already wrote its JSON document there: then the line goes to stderr, so stdout stays one
    document), else `error: ...` on stderr."""
    unwritable = output["stdout_closed"] or output["stdout_failed"] or sys.stdout is None
    if output["json"] and not output["printed"] and not unwritable:
        write_stdout(_json_text({"error": message, "exit": code}) + "\n")
        output["printed"] = True
        if not output["stdout_closed"] and not output["stdout_failed"]:
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
