"""escalated cases: their Escalation Manager and update cadence (issue 21)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import inventory.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("support_case", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("escalation_manager", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("update_every_minutes", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_update_at", inventory.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("next_update_due", inventory.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN, never batch mode's table rebuild: on SQLite that ends in DROP
    # TABLE support_case, which with foreign keys on deletes the rows referencing it or fails (see 0011).
    op.drop_column("support_case", "next_update_due")
    op.drop_column("support_case", "last_update_at")
    op.drop_column("support_case", "update_every_minutes")
    op.drop_column("support_case", "escalation_manager")
