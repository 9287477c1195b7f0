"""lease_since: when the current holder of a run's lease took it; step state `interrupted`

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import inventory.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # a native enum there; SQLite stores plain text
        op.execute("ALTER TYPE stepstate ADD VALUE IF NOT EXISTS 'interrupted'")
    with op.batch_alter_table("upgraderun") as batch:
        batch.add_column(sa.Column("lease_since", inventory.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN, never batch mode's table rebuild: on SQLite that ends in DROP
    # TABLE upgraderun, which with foreign keys on deletes the rows referencing it or fails (see 0011).
    op.drop_column("upgraderun", "lease_since")
