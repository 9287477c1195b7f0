"""Every table module, imported once, so `SQLModel.metadata` holds the whole schema (Alembic, tests)."""

from __future__ import annotations

from sqlmodel import SQLModel

from inventory import case_tables, models, outbox, releases, windows

TABLE_MODULES = (models, outbox, case_tables, windows, releases)
metadata = SQLModel.metadata
