"""Where a database's schema stands against our Alembic migrations, read without changing anything."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from inventory.db import MIGRATIONS


def head_revisions() -> set[str]:
    """The newest revision(s) of inventory/migrations/versions (one, while history stays linear)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return set(ScriptDirectory.from_config(config).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    """The revision(s) the database is at; empty for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())
