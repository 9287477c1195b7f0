"""Opening a database migrates it (inventory.db.migrate): Alembic only when the schema is not already at
the head, on SQLite and PostgreSQL."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, cast

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

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


def _schema(engine: Engine | Connection) -> dict[str, object]:
    """Every table's columns (type as the database names it, nullability, default), primary key,
    indexes, unique and CHECK constraints and foreign keys (with their ON DELETE), and PostgreSQL's enum
    types with their members in order, as the database reports them."""
    found = inspect(engine)
    tables: dict[str, object] = {
        table: (
            [
                (c["name"], c["type"].compile(dialect=engine.dialect), c["nullable"], c.get("default"))
                for c in found.get_columns(table)
            ],
            tuple(found.get_pk_constraint(table)["constrained_columns"]),
            sorted(
                (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                for i in found.get_indexes(table)
            ),
            sorted((u["name"] or "", tuple(u["column_names"])) for u in found.get_unique_constraints(table)),
            sorted(
                (
                    tuple(f["constrained_columns"]),
                    f["referred_table"],
                    tuple(f["referred_columns"]),
                    sorted(f.get("options", {}).items()),
                )
                for f in found.get_foreign_keys(table)
            ),
            sorted(" ".join(c["sqltext"].split()) for c in found.get_check_constraints(table)),
        )
        for table in sorted(found.get_table_names())
    }
    enums = cast(Any, found).get_enums() if engine.dialect.name == "postgresql" else []
    if enums:  # a key of its own only then: a database rolled back to base has none left
        tables["(enum types)"] = sorted((e["name"], tuple(e["labels"])) for e in enums)
    return tables


# What a downgrade and upgrade again could lose, each as the DDL that loses it: the comparison above
# must tell each from the head (SQLite's ALTER TABLE can only drop an index or a column).
_LOSSES = {
    "an index": "DROP INDEX ix_upgraderun_state_slot",
    "a unique index": "DROP INDEX ix_portal_user_mailbox",
    "a column": "ALTER TABLE upgraderun DROP COLUMN lease_since",
}
_POSTGRES_LOSSES = {
    "ON DELETE CASCADE": "ALTER TABLE node DROP CONSTRAINT node_cluster_id_fkey, "
    "ADD CONSTRAINT node_cluster_id_fkey FOREIGN KEY (cluster_id) REFERENCES cluster (id)",
    "a server default": "ALTER TABLE upgraderun ALTER COLUMN held_reason DROP DEFAULT",
    "a primary key": "ALTER TABLE portal_feed DROP CONSTRAINT portal_feed_pkey",
    "an enum member": "ALTER TYPE accesskind RENAME VALUE 'tunnel' TO 'tunnel_'",
    "an enum type": "ALTER TABLE cluster ALTER COLUMN kind TYPE VARCHAR(8) USING kind::text",
    "a CHECK constraint": "ALTER TABLE release ADD CONSTRAINT ck_release_id CHECK (id > 0)",
}


def test_the_schema_comparison_tells_each_loss_from_the_head(engine: Engine) -> None:
    """The round-trip tests below are only as good as `_schema`: each loss, made in a transaction
    rolled back after, must change what it reports."""
    at_head = _schema(engine)
    losses = _LOSSES | (_POSTGRES_LOSSES if engine.dialect.name == "postgresql" else {})
    with engine.connect() as connection:
        for loss, ddl in losses.items():
            with connection.begin() as transaction:
                connection.execute(text(ddl))
                assert _schema(connection) != at_head, f"_schema does not see {loss} lost"
                transaction.rollback()
    assert _schema(engine) == at_head


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


def _a_row_in_every_table(engine: Engine) -> None:
    """One row in every table of the newest schema (a table added later gets one too), each foreign key
    pointing at the row of the table it references, each enum at its newest member (the ones later
    revisions added: 'tunnel', 'interrupted', 'superseded'...)."""
    from datetime import UTC, date, datetime

    from sqlalchemy import JSON, Boolean, Date, Enum, Float, Integer

    from inventory.schema import metadata
    from inventory.types import EnumText, UTCDateTime

    def value(column: Any) -> object:
        kind = column.type
        if column.foreign_keys:
            return 1  # every referenced table's one row has the id 1
        if isinstance(kind, Enum):
            return list(kind.enum_class)[-1] if kind.enum_class else kind.enums[-1]
        if isinstance(kind, EnumText):
            return [*cast("type[StrEnum]", kind.enum)][-1]
        if isinstance(kind, UTCDateTime):
            return datetime(2026, 12, 1, tzinfo=UTC)
        if isinstance(kind, Date):
            return date(2026, 12, 1)
        if isinstance(kind, Boolean):
            return True
        if isinstance(kind, Integer | Float):
            return 1
        if isinstance(kind, JSON):
            return ["x"]
        return "x"

    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            if table.name != "installation":  # migration 0004 made its one row
                connection.execute(table.insert().values({c.name: value(c) for c in table.columns}))


def _rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: connection.execute(text(f'SELECT COUNT(*) FROM "{table}"')).scalar_one()
            for table in inspect(engine).get_table_names()
            if table != "alembic_version"
        }


def test_each_revision_goes_down_one_and_up_again_keeping_every_row(engine: Engine) -> None:
    """`alembic downgrade -1` on a database in use: each revision's downgrade keeps every row of every
    table it leaves in place (on SQLite a batch-mode table rebuild ends in DROP TABLE, which with
    foreign keys on deletes the rows referencing it, or fails), and its upgrade again gives the schema
    it gave before, over those rows; down to base and up to the head again over rows as well."""
    at_head = _schema(engine)
    _a_row_in_every_table(engine)
    assert set(_rows(engine).values()) == {1}, _rows(engine)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    chain = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]  # head first
    assert chain[0] == HEAD_REVISION and chain[-1] == "0001" and len(chain) >= 11, chain
    # Not 0001 itself: below it is base, no tables, and PostgreSQL's enum types made again lack the
    # members later revisions added until those revisions run (the walk back to the head, below).
    for revision in chain[:-1]:
        schema, rows = _schema(engine), _rows(engine)
        _alembic(engine, "downgrade", "-1")
        kept = _rows(engine)
        assert kept == {table: rows[table] for table in kept}, f"downgrading {revision} lost rows"
        _alembic(engine, "upgrade", "+1")
        assert current_revisions(engine) == {revision}
        assert _schema(engine) == schema, f"{revision} downgraded and upgraded again"
        assert _rows(engine).items() >= kept.items(), f"{revision} upgraded again lost rows"
        _alembic(engine, "downgrade", "-1")
    assert current_revisions(engine) == {"0001"}
    _alembic(engine, "downgrade", "base")
    assert set(_schema(engine)) <= {"alembic_version"}
    migrate(engine)
    assert _schema(engine) == at_head


def _same_type(engine: Engine, declared: str, found: str) -> bool:
    """The model's column type and the migrated database's are the same type. SQLite: apart from a
    VARCHAR's length, which it never enforces (migrations leave it as first declared there: an enum's
    new member, 0012's widened names). PostgreSQL: FLOAT is its DOUBLE PRECISION."""
    if engine.dialect.name == "sqlite":
        return declared.split("(")[0] == found.split("(")[0]
    synonyms = {"FLOAT": "DOUBLE PRECISION"}
    return synonyms.get(declared, declared) == synonyms.get(found, found)


def test_the_models_and_the_migrations_agree_on_every_column(engine: Engine) -> None:
    """A column changed in inventory/models.py needs its migration (and the other way round): every
    model column exists in the migrated database with the type and nullability the model declares."""
    from inventory.schema import metadata

    found = inspect(engine)
    differences = []
    for table in metadata.sorted_tables:
        columns = {c["name"]: c for c in found.get_columns(table.name)}
        for column in table.columns:
            declared = column.type.compile(dialect=engine.dialect)
            got = columns.get(column.name)
            if got is None:
                differences.append(f"{table.name}.{column.name}: not in the migrated database")
                continue
            migrated = got["type"].compile(dialect=engine.dialect)
            if not _same_type(engine, declared, migrated) or got["nullable"] != column.nullable:
                differences.append(
                    f"{table.name}.{column.name}: model {declared} nullable={column.nullable}, "
                    f"migrations {migrated} nullable={got['nullable']}"
                )
    assert differences == []


def test_a_downgrade_below_0012_keeps_an_approver_longer_than_the_old_limit_or_is_refused(
    engine: Engine,
) -> None:
    """0012 lifted the 128-character limit on who approved a run (and an audit event's actor). Going
    back below it must not cut a name: on PostgreSQL it is refused, nothing changed; SQLite, which never
    enforced the limit, keeps the name as it is."""
    long = "Ada Lovelace, Change Advisory Board " * 6
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO auditevent (at, actor, action, subject, detail) VALUES (:at, :a, 'x', 'y', '{}')"
            ),
            {"at": "2026-12-06 02:40:00+00:00", "a": long},
        )
    if engine.dialect.name == "postgresql":
        with pytest.raises(RuntimeError, match=r"auditevent\.actor are longer than 128"):
            _alembic(engine, "downgrade", "0011")
        assert current_revisions(engine) == {HEAD_REVISION}
    else:
        _alembic(engine, "downgrade", "0011")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT actor FROM auditevent")).scalar_one() == long


def test_upkeep_on_a_database_a_newer_upkeep_migrated_says_so_in_one_line(
    engine: Engine, tmp_path: Any
) -> None:
    """A host still running the previous Upkeep (a worker not yet upgraded) opening a database the new one
    migrated: Alembic cannot find the revision. That is no bug in Upkeep but the operator's to fix (upgrade
    that host): one line naming the database's revision and this Upkeep's, exit 1, nothing changed. It
    said "unexpected CommandError ... this is a bug in Upkeep" (measured: the 0011 code on a database at
    0012); this is what the next release says of a database a later one migrated."""
    from tests.integration.test_takeover import _database_url
    from tests.support.cli import home_env, upkeep_in_process

    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    said = upkeep_in_process(
        "runs", env=home_env(tmp_path / "home", UPKEEP_DATABASE_URL=_database_url(engine))
    )
    assert said.returncode == 1 and said.stdout == "" and "Traceback" not in said.stderr, said
    assert said.stderr.strip().count("\n") == 0, said.stderr
    assert "bug" not in said.stderr, said.stderr
    assert "9999" in said.stderr and HEAD_REVISION in said.stderr and "newer" in said.stderr, said.stderr
    assert current_revisions(engine) == {"9999"}
