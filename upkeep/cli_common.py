"""What every CLI module shares: the --json option and the database of the settings in force."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from upkeep.console import CliError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from flows.runtime import Runtime
    from upkeep.settings import Settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
# Ids are database integers, `integer` on PostgreSQL (2**31 - 1 at most): a larger number is a usage
# error, not SQLite's OverflowError nor PostgreSQL's "integer out of range" quoting the statement.
MAX_ID = 2**31 - 1


def parse_cli_time(text: str | None, what: str) -> datetime | None:
    """An option's ISO 8601 time with a zone (`what` names the option, e.g. "--since"); None for None."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"{what} {text!r} is not an ISO 8601 time (e.g. 2026-11-23T08:00:00Z)") from None
    if when.tzinfo is None:
        raise CliError(f"{what} {text!r} has no time zone: add Z or an offset like +01:00")
    from inventory.importer_model import DATE_RANGE, in_date_range

    if not in_date_range(when):
        raise CliError(f"{what} {text!r} is {DATE_RANGE}")
    return when


_opened: dict[str, Engine] = {}


def open_engine() -> Engine:
    """The database of the settings in force, opened (and migrated) once per command; flows run by
    this command get a Runtime built from the same settings and engine."""
    if "engine" not in _opened:
        from flows import runtime as flow_runtime
        from upkeep.database import open_database
        from upkeep.settings import load_settings

        settings = load_settings()
        engine = _opened["engine"] = open_database(settings)
        flow_runtime.configure(lambda: _build_runtime(settings, engine))
    return _opened["engine"]


def _build_runtime(settings: Settings, engine: Engine) -> Runtime:
    """The composition root, imported when a flow of this command first needs its Runtime: the
    adapters (Fabric, httpx, Apprise) are not imported by commands that only read the record."""
    from upkeep.bootstrap import build_runtime

    return build_runtime(settings, engine=engine)


def close_engine() -> None:
    """Close the command's database connections; `main` calls it as every command ends. SQLite then
    folds its write-ahead log back into the file there and then, rather than whenever interpreter
    shutdown happens to collect the last connection: after `inventory import` that was not always
    so, and the next read-only command's close changed the file's bytes."""
    engine = _opened.pop("engine", None)
    if engine is not None:
        engine.dispose()


def parse_update_id(text: str) -> int:
    """One id scheme for the update record in every command: `42` or `update-42` (as `upkeep runs`,
    `notices list` and the customer's notices name it). ASCII digits within the database's range;
    anything else is a usage error (exit 2) naming the value."""
    import re

    digits = text.strip().removeprefix("update-")
    if not re.fullmatch(r"[0-9]{1,18}", digits) or not 1 <= int(digits) <= MAX_ID:
        raise typer.BadParameter(
            f"{text[:80]!r}: expected an update id such as 42 or update-42 (see `upkeep runs`)"
        )
    return int(digits)


UpdateIdArg = Annotated[
    int,
    typer.Argument(
        help="The update: 42 or update-42 (see `upkeep runs`).", parser=parse_update_id, metavar="UPDATE"
    ),
]


# Where `getpass.getuser()` looks for the user's name, in its order, before the password database.
_USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def operator_name() -> str:
    """Who runs this command, as `getpass.getuser()` finds it (the first of $LOGNAME, $USER, $LNAME,
    $USERNAME that is set, else this uid's entry in the password database), for a record that names the
    operator: who approved, refused, paused or cancelled a run. A name that would record nobody (blank)
    or that carries a control character (a newline, a terminal escape) is refused with one line naming
    it and where it came from, before anything is written."""
    import os

    for variable in _USER_VARIABLES:
        name = os.environ.get(variable)
        if name:
            return _checked_name(name, f"${variable}")
    import pwd

    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise CliError(
            f"no user name to record: none of ${', $'.join(_USER_VARIABLES)} is set and uid {uid} has no "
            "entry in the password database; set $USER to your name; nothing was changed"
        ) from None
    return _checked_name(name, f"the password database (uid {uid})")


def _checked_name(name: str, source: str) -> str:
    import unicodedata

    if not name.strip():
        problem = "is blank"
    elif any(unicodedata.category(char) == "Cc" for char in name):
        problem = "holds a control character"
    else:
        return name
    raise CliError(
        f"the user name {name!r} from {source} {problem}: it would be recorded as who did this; "
        "set it to your name; nothing was changed"
    )
