"""Every table module, imported once, so `SQLModel.metadata` holds the whole schema (Alembic, tests)."""

from __future__ import annotations

from sqlmodel import SQLModel

from inventory import alerts, case_tables, models, oncall, outbox, portal_tables, releases, windows

TABLE_MODULES = (models, outbox, case_tables, windows, releases, alerts, oncall, portal_tables)
metadata = SQLModel.metadata
