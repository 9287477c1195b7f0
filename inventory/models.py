"""The system of record: who the customers are, what they run, and what Upkeep did to it.

Column names are the vocabulary of the whole project; the YAML import, the CLI's --json output and the
flows all use them. Times are aware UTC datetimes (see `UTCDateTime`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from inventory.types import EnumText, created_field, time_field
from scheduling.notice import UpdateKind


class ClusterKind(StrEnum):
    cloud = "cloud"
    software = "software"


class AccessKind(StrEnum):
    direct = "direct"
    jump = "jump"
    tunnel = "tunnel"  # the customer's reverse SSH tunnel to the vendor's tunnel server (issue 18)


class RunState(StrEnum):
    planned = "planned"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def active(self) -> bool:
        return self in (RunState.planned, RunState.running, RunState.paused)


# A run's kind is the kind of update it carries out, whose notice terms differ (scheduling/notice.py).
RunKind = UpdateKind


class RunSource(StrEnum):
    """Who asked for the run."""

    cli = "cli"  # an SRE's `upkeep update` (runs now, no window)
    support = "support"  # the vendor's support recommends it (`request|schedule --source support`)
    customer = "customer"  # the customer asked for it
    release = "release"  # the monthly cloud release planned it (flows/cloud_release.py)
    schedule = "schedule"  # started by the dispatcher in its slot (a deployment's parameter)
    ui = "ui"  # a deployment run given no source: the Prefect UI or `prefect deployment run`


class RequestedAction(StrEnum):
    """What `upkeep pause|cancel RUN` asked of a running run; the flow honours it between nodes."""

    none = ""
    pause = "pause"
    cancel = "cancel"


class StepState(StrEnum):
    started = "started"
    succeeded = "succeeded"
    failed = "failed"
    # Found `started` by the process that took the run over after a crash: its outcome on the node
    # was never recorded (the node is asked its real state next). A finished run has no open step.
    interrupted = "interrupted"


class Customer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=64)
    timezone: str = Field(max_length=64, description="IANA zone, e.g. America/New_York")
    # Contract terms; None means the vendor default (72 h product updates, 7 days cloud releases).
    notice_hours_product: int | None = None
    notice_hours_cloud: int | None = None
    requires_approval: bool = False
    # Whose public holidays are the customer's blackout days (and SLA days off): e.g. DE + BY.
    holiday_country: str | None = Field(default=None, max_length=8)
    holiday_subdivision: str | None = Field(default=None, max_length=16)


class Contact(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True, ondelete="CASCADE")
    email: str = Field(max_length=254)
    name: str = Field(default="", max_length=128)
    role: str = Field(default="primary", max_length=32)


class Cluster(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True, ondelete="CASCADE")
    name: str = Field(unique=True, index=True, max_length=64)
    kind: ClusterKind = Field(default=ClusterKind.software, max_length=16)
    version: str = Field(max_length=32)
    profile: str = Field(default="standard", max_length=64)
    ring: str = Field(default="broad", max_length=32)
    access: AccessKind = Field(default=AccessKind.direct, max_length=16)
    jump_host: str | None = Field(default=None, max_length=253)
    jump_port: int | None = None
    jump_user: str | None = Field(default=None, max_length=32)
    # access tunnel: the vendor's tunnel server the customer's nodes open their tunnels to (migration 0011)
    tunnel_host: str | None = Field(default=None, max_length=253)
    tunnel_port: int | None = None
    tunnel_user: str | None = Field(default=None, max_length=32)
    tunnel_host_key: str | None = Field(default=None, max_length=1024, description="'TYPE BASE64'")
    tunnel_allow_cloud: bool = False


class Node(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("cluster_id", "hostname", name="uq_node_cluster_hostname"),
        UniqueConstraint("cluster_id", "position", name="uq_node_cluster_position"),
    )
    id: int | None = Field(default=None, primary_key=True)
    cluster_id: int = Field(foreign_key="cluster.id", index=True, ondelete="CASCADE")
    hostname: str = Field(max_length=253)
    address: str = Field(max_length=253, description="where to connect; the hostname unless given")
    port: int = 22
    ssh_user: str = Field(default="upkeep", max_length=32)
    position: int = Field(description="upgrade order within the cluster, 1-based")
    # access tunnel: the port on the tunnel server this node's tunnel listens on, and the node's own key
    tunnel_port: int | None = None
    host_key: str | None = Field(default=None, max_length=1024, description="'TYPE BASE64'")


class Release(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(unique=True, index=True, max_length=32)
    package: str = Field(max_length=255, description="path of the package on the file server")
    sha256: str = Field(max_length=64)
    upgradable_from: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    deadline: datetime | None = time_field()


class UpgradeRun(SQLModel, table=True):
    # The dispatcher's reads (migration 0010): planned runs by slot, running runs by lease.
    __table_args__ = (
        Index("ix_upgraderun_state_slot", "state", "slot_start", "id"),
        Index("ix_upgraderun_state_lease", "state", "lease_until", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    cluster_id: int = Field(foreign_key="cluster.id", index=True)
    # Set to cluster_id while the run is active and NULL afterwards: a plain unique constraint then
    # allows one active run per cluster on SQLite and PostgreSQL alike (NULLs never collide).
    active_cluster_id: int | None = Field(default=None, unique=True)
    from_version: str = Field(max_length=32)
    to_version: str = Field(max_length=32)
    state: RunState = Field(default=RunState.planned, max_length=16)
    source: RunSource = Field(default=RunSource.cli, sa_type=EnumText(RunSource, 16))
    requested_by: str = Field(default="")  # a user name: no length limit (migration 0013), as approved_by
    reason: str = Field(default="", description="why it failed or was cancelled")
    kind: RunKind = Field(default=RunKind.PRODUCT_UPDATE, sa_type=EnumText(RunKind, 16))
    urgent: bool = False
    # The announced slot (None: run immediately, e.g. `upkeep update`). Every change to it bumps
    # notice_sequence, which numbers the notices and the calendar invite's SEQUENCE.
    slot_start: datetime | None = time_field()
    slot_end: datetime | None = time_field()
    # The window occurrence the run runs (or will run) in, cut at a blackout: the cutoff's limit
    # (scheduling/cutoff.py). None: no window applies (`upkeep update`, or an overridden window).
    window_start: datetime | None = time_field()
    window_end: datetime | None = time_field()
    notice_sequence: int = 0
    deferrals: int = 0
    override_reason: str = Field(default="", description="why the window was overridden, if it was")
    case_ref: str | None = Field(default=None, max_length=32, description="the case this update resolves")
    # Asked for by `upkeep pause|cancel RUN`; the flow honours it between nodes.
    requested_action: RequestedAction = Field(
        default=RequestedAction.none, sa_type=EnumText(RequestedAction, 16)
    )
    needs_approval: bool = False
    # Who answered the approval gate, as given: free text typed in the Prefect UI's resume form, or the
    # user name `upkeep approve` runs as. No length limit (migration 0012), as `reason` has none: the
    # answer is recorded after Prefect took it, when refusing it is no longer possible.
    approved_by: str = Field(default="")
    flow_run_id: str | None = Field(default=None, max_length=64)
    # Who is carrying out a `running` run, and until when without a renewal (flows/lease.py): a run
    # whose lease ran out was orphaned by a crash and the dispatcher takes it over.
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = time_field()
    # When the customer was first actually told of this update (its first announcement delivered, not
    # merely queued): the notice period counts from here (scheduling/validity.py).
    told_at: datetime | None = time_field()
    # Why the update is held instead of planned in a slot: no valid slot before its deadline. A held
    # update is never started; the next re-check (import, case close, release change) may re-slot it.
    held_reason: str = Field(default="")
    # Who the customer's notices of this update come from, fixed at its first notice: calendar clients
    # match an invite by UID and ORGANIZER, so a settings change must not move one.
    organizer: str = Field(default="", max_length=254)
    support_contact: str = Field(default="")  # UPKEEP_SUPPORT_CONTACT, free text: no limit (migration 0013)
    # When the holder took the lease (renewals move lease_until, not this): "carried out by X since".
    lease_since: datetime | None = time_field()
    created_at: datetime = created_field()
    started_at: datetime | None = time_field()
    finished_at: datetime | None = time_field()


class NodeStep(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="upgraderun.id", index=True, ondelete="CASCADE")
    node_id: int | None = Field(default=None, foreign_key="node.id", index=True)
    step: str = Field(max_length=32)
    state: StepState = Field(default=StepState.started, max_length=16)
    detail: str = Field(default="")
    output_tail: str = Field(default="")
    started_at: datetime = created_field()
    finished_at: datetime | None = time_field()


class AuditEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = created_field()
    actor: str = Field()  # as `approved_by`: an approver named in the Prefect UI is one (migration 0012)
    action: str = Field(max_length=64, index=True)
    subject: str = Field(max_length=255)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Installation(SQLModel, table=True):
    """This installation's identity, generated once (the first row wins): it goes into every invite
    UID and Message-ID, so two installations, or a rebuilt database, never collide in a mail client."""

    id: int | None = Field(default=None, primary_key=True)
    installation_id: str = Field(max_length=64)
    created_at: datetime = created_field()
