"""The database of the settings in force, opened and migrated: what every command that reads or writes
the record needs, without the adapters the composition root (upkeep.bootstrap) builds for flows.
Kept apart so `upkeep runs` and the like do not import Fabric, Paramiko, httpx and Apprise: 0.16 CPU-s
of each such command (quiet 2-core AMD EPYC, mean of 5 `python -c` imports: 0.64 against 0.80)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inventory.db import make_engine, migrate
from upkeep.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def open_database(settings: Settings) -> Engine:
    """The database of the settings, migrated. A URL that cannot be used is one `SettingsError`
    naming it (password hidden) and what is wrong; a server that is down stays the database's
    "unavailable" error (inventory.db.server_away)."""
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from inventory.db import server_away
    from upkeep.settings import SettingsError

    url = settings.resolved_database_url()
    where = settings.database_named()
    try:
        engine = make_engine(url)
    except ArgumentError:
        raise SettingsError(f"{where}: not a database URL (e.g. postgresql+psycopg://USER@HOST/DB)") from None
    except ValueError as exc:
        problem = "the port is not a number" if "int()" in str(exc) else str(exc)
        raise SettingsError(f"{where}: {problem}") from None
    except (ImportError, NoSuchModuleError) as exc:
        raise SettingsError(
            f"{where}: its driver is not installed ({exc}); use postgresql+psycopg://... or sqlite:///..."
        ) from None
    try:
        migrate(engine)
    except DBAPIError as exc:
        engine.dispose()
        if server_away(exc):
            raise
        cause = " ".join(str(exc.orig or exc).split())
        raise SettingsError(f"{where}: cannot open the database: {cause}") from None
    except Exception as exc:
        _newer_schema(exc, engine, where)
        raise
    return engine


def _newer_schema(exc: Exception, engine: Engine, where: str) -> None:
    """A database a newer Upkeep migrated (its revision unknown to this checkout: Alembic's "Can't
    locate revision") is the operator's to fix, not a bug: one line naming both revisions. Anything
    else is left as it is."""
    from alembic.util.exc import CommandError

    from inventory.db import HEAD_REVISION
    from inventory.revision import current_revisions
    from upkeep.settings import SettingsError

    if not isinstance(exc, CommandError) or "Can't locate revision" not in str(exc):
        return
    try:
        found = ", ".join(sorted(current_revisions(engine))) or "unknown"
    finally:
        engine.dispose()
    raise SettingsError(
        f"{where}: the database's schema is at revision {found}, newer than this Upkeep knows (its newest is "
        f"{HEAD_REVISION}): a newer Upkeep migrated it; run that version here too; nothing was changed"
    ) from None
