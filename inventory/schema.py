"""Every table module, imported once, so `SQLModel.metadata` holds the whole schema (Alembic, tests)."""

from __future__ import annotations

from sqlmodel import SQLModel

from inventory import cases, models, outbox, releases, windows

TABLE_MODULES = (models, outbox, cases, windows, releases)
metadata = SQLModel.metadata
