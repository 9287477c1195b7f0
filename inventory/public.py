"""Read models: what `--json` prints, one per record kind (issue #20 item 4).

In the style of the SQLModel full-stack template: where a table's columns are printed as they are, the
table and its read model share a base (`case_tables.CaseBase` -> `Case`, `CasePublic`); elsewhere the read
model names the columns it shows and is built from the row (`model_validate(row)`: `from_attributes`),
renaming a column where the printed key differs (`Field(validation_alias=...)`). Print one with
`model_dump(mode="json")` (`by_alias=True` where a key is a Python keyword, e.g. `from`).

Times print as `datetime.isoformat()` writes them (`+00:00`, not pydantic's `Z`): the keys and values of
every `--json` output stayed what they were before these models, which tests and README examples read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import ConfigDict, SerializerFunctionWrapHandler, field_serializer, model_serializer
from sqlmodel import Field, SQLModel


class PublicModel(SQLModel):
    """A read model: built from attributes of a row or record, its times printed with their offset."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)  # type: ignore[assignment]
    # Keys printed before the rest: a read model that shares a base with its table gets the base's
    # columns first, while the record's name (its id, customer ...) reads best at the top.
    first_keys: ClassVar[tuple[str, ...]] = ()

    @field_serializer("*", mode="wrap", when_used="json")
    def _iso_times(self, value: Any, handler: SerializerFunctionWrapHandler) -> Any:
        return value.isoformat() if isinstance(value, datetime) else handler(value)

    @model_serializer(mode="wrap")
    def _first_keys_first(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not self.first_keys or not isinstance(data, dict):
            return data
        return {key: data.pop(key) for key in self.first_keys if key in data} | data


# -- notices (the outbox) ----------------------------------------------------------------------------


class NoticePublic(PublicModel):
    """A notice as `upkeep notices list --json` prints it (`inventory.outbox.Notice`)."""

    id: int | None
    update: str = Field(validation_alias="update_ref")
    kind: str
    sequence: int
    state: str
    recipients: list[str]
    queued_at: datetime = Field(validation_alias="created_at")
    sent_at: datetime | None
    note: str = Field(validation_alias="last_error")  # why it failed or is retried


class NoticeStatePublic(PublicModel):
    """A notice of an update as its schedule lists it: which, and in what state."""

    kind: str
    sequence: int
    state: str


class NoticeQueuedPublic(PublicModel):
    """The notice a schedule change queued, and for whom."""

    kind: str
    sequence: int
    recipients: list[str]


# -- an update's schedule --------------------------------------------------------------------------------


class SlotPublic(PublicModel):
    start: datetime
    end: datetime


class DeferralsPublic(PublicModel):
    used: int
    left: int


class SchedulePublic(PublicModel):
    """An update's announced slot and what the customer may do about it (`run_report.schedule_fields`)."""

    slot: SlotPublic | None
    window_timezone: str | None
    urgent: bool
    deferrals: DeferralsPublic
    held_reason: str | None
    notices: list[NoticeStatePublic]


class ScheduledUpdatePublic(PublicModel):
    """What `upkeep schedule|reschedule|defer|cancel-update --json` prints before its schedule."""

    id: int | None
    update: str
    run: int | None
    customer: str
    cluster: str
    timezone: str
    from_version: str = Field(alias="from")
    to_version: str = Field(alias="to")
    state: str
    urgent: bool
    case: str | None
    slot_start: datetime | None
    slot_end: datetime | None
    notice: NoticeQueuedPublic | None


# -- a run's record --------------------------------------------------------------------------------------


class NodeResultPublic(PublicModel):
    """One node of a run (`run_report.node_rows`): versions before and after, seconds, how it ended."""

    node: str
    before: str | None
    after: str | None
    seconds: float | None
    result: str


class DecisionPublic(PublicModel):
    """A decision people took about a run (approve, refuse, cancel, pause, window override)."""

    at: datetime
    by: str
    decision: str
    reason: str


class RunActionPublic(PublicModel):
    """What `upkeep pause|cancel|approve RUN --json` did: the run's state and request after it."""

    id: int
    update: str
    action: str
    state: str
    requested_action: str
    message: str


# -- inventory import: what the re-check did to planned updates ------------------------------------------


class RecheckPublic(PublicModel):
    """One planned update re-checked after an import (`flows.integrity.Outcome`)."""

    update: str
    cluster: str
    action: str
    reasons: list[str]
    slot_start: datetime | None
    slot_end: datetime | None
    state: str | None
    describe: str


# -- the calendar ----------------------------------------------------------------------------------------


class CalendarEntryPublic(PublicModel):
    """One thing on `upkeep calendar` (`flows.schedule_calendar.CalendarRow`): window, update, notice,
    reminder, blackout or dst."""

    at: datetime
    end: datetime | None
    local: str
    utc: str
    what: str
    customer: str
    cluster: str
    zone: str
    detail: str
    ref: str


# -- cloud releases --------------------------------------------------------------------------------------


class RingClusterPublic(PublicModel):
    """A cluster of a rollout's ring (`upkeep release status --json`)."""

    cluster: str
    customer: str
    status: str
    notified: bool
    run_id: int | None
    slot_start: datetime | None
    deferrals: int
    reason: str


class RingPublic(PublicModel):
    """A ring of a rollout: a count per status (`releases.STATUSES`) and its clusters."""

    ring: str
    planned: int = 0
    notified: int = 0
    running: int = 0
    paused: int = 0  # paused by an SRE (`upkeep pause`): goes on once one resumes it
    stalled: int = 0  # paused by the bound on idle windows (flows/outcomes.py), not counted running
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    deferred: int = 0
    skipped: int = 0
    blocked: int = 0
    clusters: list[RingClusterPublic]


# -- on call ---------------------------------------------------------------------------------------------


class PersonPublic(PublicModel):
    """Someone of the rotation (`scheduling.oncall.Person`; their notify URL is not printed)."""

    name: str
    email: str
    role: str


class ShiftPublic(PublicModel):
    start: datetime
    end: datetime


class PagePublic(PublicModel):
    """An open page (`inventory.alerts.Page`): why, how far up the chain, who was paged, next step."""

    id: int | None
    reason: str
    level: int
    paged: list[str]
    escalate_at: datetime | None


class OnCallPublic(PublicModel):
    """`upkeep oncall show --json`: who is on call at `at`, the shift, the chain, the open pages."""

    at: datetime
    on_call: PersonPublic
    shift: ShiftPublic
    handover: str  # "HH:MM ZONE (daily|weekly)"
    team_lead: PersonPublic
    escalation: list[PersonPublic]
    informed: list[PersonPublic]
    open_pages: list[PagePublic]


class PageAckPublic(PublicModel):
    """`upkeep oncall ack PAGE --json`: who acknowledged it, at which level; its escalation stopped."""

    page: int
    acked_by: str
    level: int
    escalation: str = "stopped"


# -- an update's plan (`upkeep update --dry-run --json`) ----------------------------------------------


class PlannedNodePublic(PublicModel):
    """A node as an update will reach it, in upgrade order (`flows.plan.PlannedNode`)."""

    id: int
    hostname: str
    address: str
    port: int
    user: str
    position: int
    tunnel_port: int | None
    host_key: str | None


class JumpPublic(PublicModel):
    host: str
    port: int
    user: str


class TunnelServerPublic(PublicModel):
    host: str
    port: int
    user: str
    host_key: str


class PlanPublic(PublicModel):
    """What an update will do, worked out from the inventory (`flows.plan.UpdatePlan`); nothing is
    touched. Its versions keep the plan's own names (`from_version`, `to_version`)."""

    dry_run: bool = True
    customer: str
    cluster: str
    cluster_id: int
    from_version: str
    to_version: str
    path: list[str]
    package: str
    sha256: str
    nodes: list[PlannedNodePublic]
    jump: JumpPublic | None
    tunnel: TunnelServerPublic | None
    steps: list[str]


# -- diagnostics and notice delivery ---------------------------------------------------------------------


class DiagnosticsResultPublic(PublicModel):
    """`upkeep diagnostics collect --json` (`flows.diagnostics.CollectResult`): the bundle uploaded for a
    case, its nodes, the ones missing and why, and the redactions made per kind."""

    case: str
    bundle_id: int
    url: str
    sha256: str
    size: int
    partial: bool
    nodes: list[str]
    missing: dict[str, str]
    redactions: dict[str, int]


class FailedNoticePublic(PublicModel):
    key: str
    customer_id: int
    recipients: list[str]
    error: str


class DeliveryPublic(PublicModel):
    """`upkeep notices send --json` (`flows.notify.DeliveryReport`): notices by idempotency key."""

    sent: list[str]
    retrying: list[str]
    failed: list[FailedNoticePublic]
    superseded: list[str]
    transport_error: str
    out_of_time: bool = False  # stopped by the call's time budget (the dispatcher's tick); none on the CLI
    unknown: list[FailedNoticePublic] = []  # handed over, the server's answer unreadable: not sent again
    unexpected: list[FailedNoticePublic] = []  # failed on an exception that is no SMTP answer: retried
