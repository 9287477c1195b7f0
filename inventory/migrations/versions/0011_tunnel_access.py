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
    # Plain ALTER TABLE ... ADD/DROP COLUMN on both dialects, never batch mode's table rebuild: on
    # SQLite the rebuild ends in DROP TABLE cluster, which SQLite refuses while nodes reference a
    # cluster (foreign_keys is ON on every connection, and PRAGMA foreign_keys cannot be switched off
    # inside the transaction a migration runs in) - so no database with clusters went up to 0011 or
    # down below it. None of these columns carries an index, a key or a CHECK, which SQLite's native
    # ADD COLUMN / DROP COLUMN (>= 3.35) accept.
    op.add_column("cluster", sa.Column("tunnel_host", sa.String(length=253), nullable=True))
    op.add_column("cluster", sa.Column("tunnel_port", sa.Integer(), nullable=True))
    op.add_column("cluster", sa.Column("tunnel_user", sa.String(length=32), nullable=True))
    op.add_column("cluster", sa.Column("tunnel_host_key", sa.String(length=1024), nullable=True))
    op.add_column(
        "cluster", sa.Column("tunnel_allow_cloud", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("node", sa.Column("tunnel_port", sa.Integer(), nullable=True))
    op.add_column("node", sa.Column("host_key", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    # One column at a time, without a table rebuild: see upgrade().
    for name in ("host_key", "tunnel_port"):
        op.drop_column("node", name)
    for name in ("tunnel_allow_cloud", "tunnel_host_key", "tunnel_user", "tunnel_port", "tunnel_host"):
        op.drop_column("cluster", name)
