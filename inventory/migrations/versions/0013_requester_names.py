"""requester names kept whole: upgraderun.requested_by, page.acked_by (and support_contact) without a limit

Both hold the user name a command runs as (`getpass.getuser()`): `upkeep update|request|schedule` record
who asked for a run, `upkeep oncall ack` who acknowledged a page. On PostgreSQL a name longer than
VARCHAR(128) (a directory's DOMAIN\\first.last-..., a service account named after its team and purpose)
made the command die on a raw DataError, nothing recorded. Both columns become VARCHAR without a length,
as 0012 did for approved_by and auditevent.actor. So does upgraderun.support_contact (VARCHAR(254)), the
free-text UPKEEP_SUPPORT_CONTACT copied onto each run as it is scheduled: a desk's numbers, hours and
address overflowed it and scheduling died the same way.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_COLUMNS = (("upgraderun", "requested_by", 128), ("page", "acked_by", 128), ("upgraderun", "support_contact", 254))


def upgrade() -> None:
    # PostgreSQL only, as 0012 (see there): SQLite never enforces a VARCHAR's length, and changing a
    # declared type there rebuilds the table (DROP TABLE upgraderun: its steps cascade away).
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, length in _COLUMNS:
        op.alter_column(
            table,
            column,
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=length),
            type_=sqlmodel.sql.sqltypes.AutoString(),
            existing_nullable=False,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Refused rather than cut: a name cut to 128 characters no longer says who asked. The tables are
    # locked first (the ALTERs take this lock anyway): a long name committed between the count and the
    # ALTER failed the ALTER on a raw StringDataRightTruncation, not this refusal (adv46).
    op.execute("LOCK TABLE upgraderun, page IN ACCESS EXCLUSIVE MODE")
    for table, column, length in _COLUMNS:
        longer = op.get_bind().execute(
            sa.text(f"SELECT COUNT(*) FROM {table} WHERE char_length({column}) > {length}")
        )
        count = longer.scalar_one()
        if count:
            raise RuntimeError(
                f"cannot downgrade below 0013: {count} row(s) of {table}.{column} are longer than "
                f"{length} characters, which the older schema cannot hold; nothing was changed"
            )
    for table, column, length in _COLUMNS:
        op.alter_column(
            table,
            column,
            existing_type=sqlmodel.sql.sqltypes.AutoString(),
            type_=sqlmodel.sql.sqltypes.AutoString(length=length),
            existing_nullable=False,
        )
