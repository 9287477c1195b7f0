"""the window a run runs in (issue 21: the cutoff uses the window, not the estimate-sized slot)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import inventory.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upgraderun", schema=None) as batch_op:
        batch_op.add_column(sa.Column("window_start", inventory.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("window_end", inventory.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN, never batch mode's table rebuild: on SQLite that ends in DROP
    # TABLE upgraderun, which with foreign keys on deletes the rows referencing it or fails (see 0011).
    op.drop_column("upgraderun", "window_end")
    op.drop_column("upgraderun", "window_start")
