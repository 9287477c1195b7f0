"""The on-call rotation, as imported from the inventory's `oncall:` section (one row, replaced whole).

Stored as the validated spec (scheduling/oncall.py's `Rotation` reads it back): who rotates, from when,
how often and at which hand-over time in which zone, the team lead, the escalation chain and who is
kept informed. The rule of who is on call at an instant lives in scheduling/oncall.py, pure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel, col, select

from inventory.types import created_field, utcnow


class OnCallRotation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = created_field()


def current_spec(session: Session) -> dict[str, Any] | None:
    row = session.exec(select(OnCallRotation).order_by(col(OnCallRotation.id).desc())).first()
    return dict(row.spec) if row is not None else None


def replace_spec(spec: dict[str, Any], *, session: Session, now: datetime | None = None) -> None:
    for row in session.exec(select(OnCallRotation)).all():
        session.delete(row)
    session.add(OnCallRotation(spec=spec, updated_at=now or utcnow()))
