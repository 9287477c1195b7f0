"""The read models --json prints (inventory/public.py): the keys they promise stay in step with the
tables and records they are built from, and times print as before (`+00:00`, not pydantic's `Z`)."""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import UTC, datetime

from flows.diagnostics import CollectResult
from flows.notify import DeliveryReport, FailedNotice
from flows.plan import PlannedNode, UpdatePlan
from inventory.case_tables import Case, CasePublic, DiagnosticsBundle, DiagnosticsBundlePublic
from inventory.public import (
    DeliveryPublic,
    DiagnosticsResultPublic,
    NoticePublic,
    PlanPublic,
    RingPublic,
    SlotPublic,
)
from inventory.releases import STATUSES

T = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)


def test_times_print_with_their_offset_as_isoformat_writes_them() -> None:
    slot = SlotPublic(start=T, end=T.replace(hour=3))
    assert slot.model_dump(mode="json") == {
        "start": "2026-12-07T02:00:00+00:00",
        "end": "2026-12-07T03:00:00+00:00",
    }
    assert slot.model_dump()["start"] == T  # python mode keeps the datetime


def test_a_ring_counts_every_status_a_rollout_member_can_have() -> None:
    # ring_rows validates a dict of STATUSES counts: a status the model lacked would vanish silently
    counts = set(RingPublic.model_fields) - {"ring", "clusters"}
    assert counts == set(STATUSES)


def test_a_case_prints_its_columns_but_its_row_keys_and_names_itself_first() -> None:
    columns = set(Case.model_fields) - {"id", "customer_id", "ref"}
    assert columns <= set(CasePublic.model_fields)
    case = Case(
        id=7, ref="SUP-1", customer_id=1, subject="s", category="issue", queue="q", priority="P2",
        opened_at=T, first_response_due=T,
    )  # fmt: skip
    data = CasePublic.model_validate(
        case.model_dump(exclude={"id", "customer_id", "ref"})
        | {"id": case.ref, "customer": "acme", "clusters": [], "bundles": [], "runs": [], "notes": []}
    ).model_dump(mode="json")
    assert list(data)[:4] == ["id", "customer", "clusters", "subject"]
    assert data["id"] == "SUP-1" and data["opened_at"] == "2026-12-07T02:00:00+00:00"
    bundle = DiagnosticsBundle(
        id=3,
        case_id=7,
        cluster_id=1,
        url="u",
        sha256="s",
        size=1,
        created_at=T,
        missing_nodes={},
        redactions={},
    )
    shown = DiagnosticsBundlePublic.model_validate(bundle).model_dump(mode="json")
    assert next(iter(shown)) == "id" and "case_id" not in shown


def test_a_notice_renames_its_columns_to_the_printed_keys() -> None:
    class Row:  # the columns NoticePublic reads (inventory.outbox.Notice)
        id, update_ref, kind, sequence, state = 4, "update-1", "scheduled", 1, "sent"
        recipients, created_at, sent_at, last_error = ["ops@acme.example"], T, None, ""

    assert NoticePublic.model_validate(Row()).model_dump(mode="json") == {
        "id": 4, "update": "update-1", "kind": "scheduled", "sequence": 1, "state": "sent",
        "recipients": ["ops@acme.example"], "queued_at": "2026-12-07T02:00:00+00:00", "sent_at": None,
        "note": "",
    }  # fmt: skip


def test_records_printed_from_dataclasses_keep_every_field() -> None:
    node = PlannedNode(1, "n1", "127.0.0.1", 2201, "upkeep", 1)
    plan = UpdatePlan("acme", "acme-c1", 1, "9.8.0", "9.9.0", ["9.9.0"], "p.tgz", "ab" * 32, [node])
    assert PlanPublic.model_validate(plan).model_dump(mode="json") == {"dry_run": True, **asdict(plan)}
    result = CollectResult(
        "CASE-1", 3, "https://x/b", "ab" * 32, 9, True, ["n1"], {"n2": "down"}, {"password": 1}
    )
    assert DiagnosticsResultPublic.model_validate(result).model_dump(mode="json") == asdict(result)
    report = DeliveryReport(["k1"], ["k2"], [FailedNotice("k3", 1, ["a@b.example"], "550")], ["k4"])
    assert DeliveryPublic.model_validate(report).model_dump(mode="json") == asdict(report)
    for record, model in ((result, DiagnosticsResultPublic), (report, DeliveryPublic)):
        assert [f.name for f in fields(record)] == list(model.model_fields)
