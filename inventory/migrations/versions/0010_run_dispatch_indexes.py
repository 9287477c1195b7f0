"""indexes for the dispatcher's queries on upgraderun (issue 19)

Every tick reads planned runs by slot (due now, reminders due within 72 h) and running runs by lease
(live count, orphans). Without these, each of those reads is a sequential scan of the whole run table:
at 100,000 planned updates the tick loaded every planned run, twice.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upgraderun", schema=None) as batch_op:
        batch_op.create_index("ix_upgraderun_state_slot", ["state", "slot_start", "id"], unique=False)
        batch_op.create_index("ix_upgraderun_state_lease", ["state", "lease_until", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upgraderun", schema=None) as batch_op:
        batch_op.drop_index("ix_upgraderun_state_lease")
        batch_op.drop_index("ix_upgraderun_state_slot")
