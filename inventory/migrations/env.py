"""Alembic environment: runs on the connection handed over by `inventory.db.migrate`."""

from __future__ import annotations

from alembic import context

from inventory.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through inventory.db.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
