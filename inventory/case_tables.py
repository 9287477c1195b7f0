"""Support case tables: the case, the clusters it concerns, and its diagnostics bundles.

Repository functions (open, status changes, auto-close, bundles) are in `inventory.cases`, which
re-exports these names. Times are aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from inventory.public import PublicModel
from inventory.types import created_field, time_field
from scheduling.sla import Category, Priority


class CaseStatus(StrEnum):
    new = "new"
    open = "open"
    waiting_on_customer = "waiting_on_customer"
    escalated = "escalated"
    closed = "closed"


class EscalatedBy(StrEnum):
    customer = "customer"
    sre = "sre"


def _enum(kind: type[StrEnum], *, nullable: bool = False, index: bool = False, default: Any = None) -> Any:
    """Stored as its value in a plain VARCHAR (no PostgreSQL enum type to migrate when values change)."""
    column_type = SAEnum(
        kind,
        name=f"case_{kind.__name__.lower()}",
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )
    return Field(default=default, sa_column=Column(column_type, nullable=nullable, index=index))


class CaseBase(SQLModel):
    """A case's columns as `upkeep case show --json` prints them (`Case` the table, `CasePublic`)."""

    subject: str = Field(max_length=200)
    category: Category = _enum(Category)
    queue: str = Field(
        max_length=32,
        description="the handbook role that works it: Systems Reliability Engineer or Customer Success "
        "Representative",
    )
    priority: Priority = _enum(Priority)
    status: CaseStatus = _enum(CaseStatus, index=True, default=CaseStatus.new)
    opened_by: str = Field(default="", max_length=128)
    opened_at: datetime = time_field(nullable=False)
    first_response_due: datetime = time_field(nullable=False)
    waiting_since: datetime | None = time_field()
    contact_attempts: int = Field(default=0, description="attempts to reach the customer in this wait")
    last_contact_at: datetime | None = time_field()
    escalated_by: EscalatedBy | None = _enum(EscalatedBy, nullable=True)
    escalation_reason: str = Field(default="", max_length=2000)
    escalated_at: datetime | None = time_field()
    # Who holds an escalated case (the Escalation Manager, SRE Manager role: "Name <email>"), how often
    # its stakeholders get an update, and when the next one is due (missed: the manager is alerted).
    escalation_manager: str = Field(default="", max_length=254)
    update_every_minutes: int | None = None
    last_update_at: datetime | None = time_field()
    next_update_due: datetime | None = time_field()
    closed_at: datetime | None = time_field()
    close_reason: str = Field(default="", max_length=2000)


class Case(CaseBase, table=True):
    __tablename__ = "support_case"  # CASE is a reserved word in SQL
    id: int | None = Field(default=None, primary_key=True)
    ref: str = Field(unique=True, index=True, max_length=24, description="CASE-n or an external id")
    customer_id: int = Field(foreign_key="customer.id", index=True)


class CaseCluster(SQLModel, table=True):
    case_id: int = Field(foreign_key="support_case.id", primary_key=True, ondelete="CASCADE")
    cluster_id: int = Field(foreign_key="cluster.id", primary_key=True, index=True, ondelete="CASCADE")


class DiagnosticsBundleBase(SQLModel):
    run_id: int | None = Field(default=None, foreign_key="upgraderun.id", index=True)
    cluster_id: int = Field(foreign_key="cluster.id", index=True)
    url: str = Field(max_length=1024)
    sha256: str = Field(max_length=64)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))  # bytes; bundles can pass 2 GiB
    partial: bool = False
    missing_nodes: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    redactions: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = created_field()


class DiagnosticsBundle(DiagnosticsBundleBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="support_case.id", index=True, ondelete="CASCADE")


# -- read models (`upkeep case show|list --json`) ----------------------------------------------------------


class DiagnosticsBundlePublic(PublicModel, DiagnosticsBundleBase):
    first_keys = ("id",)
    id: int | None


class CaseRunPublic(PublicModel):
    """A run whose failure opened or joined the case, with its Prefect flow-run link."""

    run: int
    flow_run_url: str


class CaseNotePublic(PublicModel):
    at: datetime
    by: str
    note: str


class CasePublic(PublicModel, CaseBase):
    """A case with its customer's and clusters' names (its `id` is the case's ref, e.g. CASE-12), its
    bundles, and the runs and notes about it (`flows.failed_run_case.case_links`)."""

    id: str
    customer: str | int  # the customer's name (its id if the customer is gone)
    clusters: list[str]
    bundles: list[DiagnosticsBundlePublic]
    runs: list[CaseRunPublic]
    notes: list[CaseNotePublic]
    first_keys = ("id", "customer", "clusters")
