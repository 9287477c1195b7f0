"""customer holidays: the region whose public holidays are blackout days for the customer

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customer", schema=None) as batch_op:
        batch_op.add_column(sa.Column("holiday_country", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True))
        batch_op.add_column(sa.Column("holiday_subdivision", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN, never batch mode's table rebuild: on SQLite that ends in DROP
    # TABLE customer, which with foreign keys on deletes the rows referencing it or fails (see 0011).
    op.drop_column("customer", "holiday_subdivision")
    op.drop_column("customer", "holiday_country")
