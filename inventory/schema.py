"""Every table module, imported once, so `SQLModel.metadata` holds the whole schema (Alembic, tests)."""

from __future__ import annotations

from sqlmodel import SQLModel

from inventory import alerts, case_tables, models, oncall, outbox, releases, windows

TABLE_MODULES = (models, outbox, case_tables, windows, releases, alerts, oncall)
metadata = SQLModel.metadata
