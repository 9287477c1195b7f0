"""Opening a database migrates it (inventory.db.migrate): Alembic only when the schema is not already at
the head, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import inspect, text
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


def _schema(engine: Engine) -> dict[str, object]:
    """Every table's columns, indexes, unique constraints and foreign keys, as the database reports them."""
    found = inspect(engine)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
            sorted(
                (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                for i in found.get_indexes(table)
            ),
            sorted((u["name"] or "", tuple(u["column_names"])) for u in found.get_unique_constraints(table)),
            sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in found.get_foreign_keys(table)
            ),
        )
        for table in sorted(found.get_table_names())
    }


def test_every_revision_downgrades_and_the_way_back_up_gives_the_same_schema(engine: Engine) -> None:
    """An operator rolling Upkeep back runs `alembic downgrade`: every revision's downgrade must run, leave
    nothing of its own behind (or the upgrade after it fails on an index or table that already exists),
    and the head reached again must be the schema a new database gets."""
    at_head = _schema(engine)
    assert {"upgraderun", "nodestep", "cluster", "support_case"} <= set(at_head), sorted(at_head)
    _alembic(engine, "downgrade", "base")
    assert set(_schema(engine)) <= {"alembic_version"}
    assert current_revisions(engine) == set()
    migrate(engine)
    assert current_revisions(engine) == {HEAD_REVISION}
    assert _schema(engine) == at_head
