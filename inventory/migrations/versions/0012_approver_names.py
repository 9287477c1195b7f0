"""approver names kept whole: upgraderun.approved_by and auditevent.actor without a length limit

Who answered the approval gate comes from operator input: free text typed in the Prefect UI's resume
form, or the user name `upkeep approve` runs as. On PostgreSQL a name longer than VARCHAR(128) made the
gate's write fail after Prefect had taken the answer: the run ended failed, its answer unrecorded (and
`upkeep approve` under such a name died with a DataError after waking the gate). Both columns become
VARCHAR without a length, as upgraderun.reason and the gate's other writes already are.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COLUMNS = (("upgraderun", "approved_by"), ("auditevent", "actor"))
_OLD_LENGTH = 128


def upgrade() -> None:
    # PostgreSQL only. SQLite never enforces a VARCHAR's length (a 200-character approver was stored
    # before this revision, measured), so there is nothing to widen; and the only way to change a declared
    # type there, batch mode's table rebuild, ends in DROP TABLE upgraderun, which with foreign keys on
    # deletes every nodestep row (ON DELETE CASCADE) or fails on the alerts and rollout members that
    # reference a run (see 0007, 0011). SQLite's declared VARCHAR(128) stays, as the enum columns'
    # lengths stay there when a member is added.
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.alter_column(
            table,
            column,
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=_OLD_LENGTH),
            type_=sqlmodel.sql.sqltypes.AutoString(),
            existing_nullable=False,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Refused rather than cut: a name cut to 128 characters no longer says who approved.
    for table, column in _COLUMNS:
        longer = op.get_bind().execute(
            sa.text(f"SELECT COUNT(*) FROM {table} WHERE char_length({column}) > {_OLD_LENGTH}")
        )
        count = longer.scalar_one()
        if count:
            raise RuntimeError(
                f"cannot downgrade below 0012: {count} row(s) of {table}.{column} are longer than "
                f"{_OLD_LENGTH} characters, which the older schema cannot hold; nothing was changed"
            )
    for table, column in _COLUMNS:
        op.alter_column(
            table,
            column,
            existing_type=sqlmodel.sql.sqltypes.AutoString(),
            type_=sqlmodel.sql.sqltypes.AutoString(length=_OLD_LENGTH),
            existing_nullable=False,
        )
