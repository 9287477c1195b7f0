"""Opening a database migrates it (inventory.db.migrate): Alembic only when the schema is not already at
the head, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Engine

from inventory.db import HEAD_REVISION, MIGRATIONS, migrate
from inventory.revision import current_revisions


def _alembic(engine: Engine, verb: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, verb)(config, revision)


def test_a_database_at_the_head_is_opened_without_alembic(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def upgrade(*args: object, **kwargs: object) -> None:
        raise AssertionError("Alembic ran for a database already at the head")

    monkeypatch.setattr(command, "upgrade", upgrade)
    migrate(engine)
    assert current_revisions(engine) == {HEAD_REVISION}


def test_a_database_one_revision_behind_is_brought_to_the_head(engine: Engine) -> None:
    _alembic(engine, "downgrade", "-1")
    assert current_revisions(engine) != {HEAD_REVISION}
    migrate(engine)
    assert current_revisions(engine) == {HEAD_REVISION}


def test_a_database_newer_than_this_checkout_is_refused_as_before(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(CommandError, match="9999"):
        migrate(engine)
