"""schedule integrity: when the customer was told, held updates, fixed sender, installation id

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

import inventory.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upgraderun", schema=None) as batch_op:
        batch_op.add_column(sa.Column("told_at", inventory.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("held_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=""))
        batch_op.add_column(
            sa.Column("organizer", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("support_contact", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False, server_default="")
        )
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("installation_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", inventory.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # Generated here, once, under the migration lock: no two processes starting on a new database can
    # each make one, and reading it (a delivery with nothing to send) never writes.
    op.bulk_insert(
        installation,
        [{"installation_id": secrets.token_hex(6), "created_at": datetime.now(UTC)}],
    )
    if op.get_bind().dialect.name == "postgresql":  # SQLite stores the enum as text
        op.execute("ALTER TYPE noticestate ADD VALUE IF NOT EXISTS 'superseded'")
    # Updates announced before this migration: told when their first announcement was delivered.
    op.execute(
        "UPDATE upgraderun SET told_at = (SELECT MIN(notice.sent_at) FROM notice "
        "WHERE notice.update_ref = 'update-' || CAST(upgraderun.id AS VARCHAR) AND notice.state = 'sent' "
        "AND notice.kind IN ('scheduled', 'reminder', 'rescheduled', 'deferred'))"
    )


def downgrade() -> None:
    op.drop_table("installation")
    # Plain ALTER TABLE ... DROP COLUMN, never batch mode's table rebuild: on SQLite that ends in DROP
    # TABLE upgraderun, which with foreign keys on deletes the rows referencing it or fails (see 0011).
    op.drop_column("upgraderun", "support_contact")
    op.drop_column("upgraderun", "organizer")
    op.drop_column("upgraderun", "held_reason")
    op.drop_column("upgraderun", "told_at")
