"""Where a database's schema stands against our Alembic migrations, read without changing anything."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from inventory.db import MIGRATIONS


def _scripts() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def head_revisions() -> set[str]:
    """The newest revision(s) of inventory/migrations/versions (one, while history stays linear)."""
    return set(_scripts().get_heads())


def known_revisions() -> set[str]:
    """Every revision of inventory/migrations/versions: one a database is at and this is not among was
    written by a newer Upkeep (no `upkeep db upgrade` here can move it)."""
    return {script.revision for script in _scripts().walk_revisions()}


def current_revisions(engine: Engine) -> set[str]:
    """The revision(s) the database is at; empty for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())
