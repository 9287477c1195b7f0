"""Migrations stay one line: two engineers each adding "the next" revision on top of the same head leave
Alembic with two heads, and `upgrade head` then refuses to run on every database."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory

from inventory.db import HEAD_REVISION, MIGRATIONS


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def test_alembic_has_exactly_one_head() -> None:
    heads = _scripts().get_heads()
    assert len(heads) == 1, (
        f"Alembic has {len(heads)} heads {sorted(heads)}: set one's down_revision to the other"
    )


def test_migrations_form_one_line_from_the_first_to_the_head() -> None:
    scripts = _scripts()
    revisions = list(scripts.walk_revisions())  # head first
    assert all(not isinstance(r.down_revision, tuple | list) for r in revisions), "a merge revision"
    assert [r.down_revision for r in revisions][-1] is None
    chain = [r.revision for r in revisions]
    assert chain == [r.revision for r in scripts.iterate_revisions(scripts.get_current_head(), "base")]
    assert len(chain) == len(set(chain)) == len(list(MIGRATIONS.joinpath("versions").glob("[0-9]*.py")))


def test_the_head_the_fast_path_compares_with_is_alembics_head() -> None:
    """inventory.db.migrate skips Alembic for a database already at HEAD_REVISION: a new migration
    without HEAD_REVISION moved on would leave every database one revision behind, silently."""
    assert _scripts().get_heads() == [HEAD_REVISION], "set inventory.db.HEAD_REVISION to the new head"
