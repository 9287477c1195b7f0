"""access tunnel: the tunnel server of a cluster, each node's tunnel port and own host key (issue 18)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # a native enum there; SQLite stores plain text
        op.execute("ALTER TYPE accesskind ADD VALUE IF NOT EXISTS 'tunnel'")
    with op.batch_alter_table("cluster", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tunnel_host", sa.String(length=253), nullable=True))
        batch_op.add_column(sa.Column("tunnel_port", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tunnel_user", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("tunnel_host_key", sa.String(length=1024), nullable=True))
        batch_op.add_column(
            sa.Column("tunnel_allow_cloud", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tunnel_port", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("host_key", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_column("host_key")
        batch_op.drop_column("tunnel_port")
    with op.batch_alter_table("cluster", schema=None) as batch_op:
        for name in ("tunnel_allow_cloud", "tunnel_host_key", "tunnel_user", "tunnel_port", "tunnel_host"):
            batch_op.drop_column(name)
