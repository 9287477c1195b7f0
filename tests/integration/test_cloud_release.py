"""The monthly cloud release on SQLite and PostgreSQL, without a Prefect server: the planner's plain
functions and the start gate are called directly, with the clock injected, and runs are moved the way
the dispatcher moves them (claimed with its conditional UPDATE, then finished).

Fleet: 4 customers (New York, Berlin, Kolkata, Lord Howe), 12 cloud clusters on 9.9.0 in 3 rings
(c01-c02 canary, c03-c06 early, c07-c12 broad), all with a daily 02:00-06:00 local window and a cloud
notice term of 0 h; plus legacy-c13 (cloud, 9.7.0: no upgrade path) and soft-c14 (software: not part of
cloud releases). The catalog has 9.9.0 and 9.10.0 (from 9.9.0 only). Now: Monday 2026-12-07 12:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select
from typer.testing import CliRunner

from flows import runtime as flow_runtime
from flows.cloud_release import plan_rollout, replan_skipped, status_markdown
from flows.rollout import release_status, resume_rollout, start_gate
from inventory import cases
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import AuditEvent, Cluster, Customer, Release, RunState, UpgradeRun
from inventory.outbox import Notice, mark_sent
from inventory.releases import Rollout, RolloutCluster
from inventory.repo import NotFound
from inventory.runs import finish_run

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
SHA = "ab" * 32
CUSTOMERS = [("acme", "America/New_York"), ("globex", "Europe/Berlin"), ("initech", "Asia/Kolkata"),
             ("umbrella", "Australia/Lord_Howe")]  # fmt: skip
RINGS = ["canary"] * 2 + ["early"] * 4 + ["broad"] * 6
WINDOW = [{"days": "mon-sun", "start": "02:00", "duration": "4h"}]


def _cluster(
    name: str, *, kind: str = "cloud", version: str = "9.9.0", ring: str = "broad"
) -> dict[str, Any]:
    nodes = [{"hostname": f"{name}-n{i}"} for i in (1, 2, 3)]
    return {"name": name, "kind": kind, "version": version, "ring": ring, "access": {"type": "direct"},
            "nodes": nodes, "windows": WINDOW}  # fmt: skip


def _inventory() -> dict[str, Any]:
    customers = [
        {"name": name, "timezone": tz, "notice": {"cloud_release": "0h"},
         "contacts": [{"email": f"ops@{name}.example"}], "clusters": []}
        for name, tz in CUSTOMERS
    ]  # fmt: skip
    for number, ring in enumerate(RINGS, 1):
        customers[(number - 1) % 4]["clusters"].append(_cluster(f"c{number:02d}", ring=ring))
    customers[0]["clusters"].append(_cluster("legacy-c13", version="9.7.0"))
    customers[1]["clusters"].append(_cluster("soft-c14", kind="software"))
    releases = [
        {"version": "9.9.0", "package": "releases/p-9.9.0.tar.gz", "sha256": SHA, "from": ["9.8.0"]},
        {"version": "9.10.0", "package": "releases/p-9.10.0.tar.gz", "sha256": SHA, "from": ["9.9.0"]},
    ]
    return {"customers": customers, "releases": releases}


@pytest.fixture
def fleet(engine: Engine, tmp_path: Path) -> Engine:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(_inventory(), sort_keys=False))
    import_inventory(path, engine=engine, actor="test")
    return engine


def _plan(engine: Engine, version: str | None = None, now: datetime = NOW, **terms: Any) -> Any:
    return plan_rollout(version, engine=engine, now=now, actor="test", **terms)


def _runs(session: Session) -> dict[str, UpgradeRun]:
    query = select(Cluster.name, UpgradeRun).join(UpgradeRun, col(UpgradeRun.cluster_id) == Cluster.id)
    return {name: run for name, run in session.exec(query)}


def _gate(engine: Engine, cluster: str, now: datetime) -> str | None:
    with session_scope(engine) as session:
        return start_gate(_runs(session)[cluster], session=session, now=now)


def _claim(session: Session, run: UpgradeRun, now: datetime) -> None:
    """What the dispatcher does once the gate says yes (flows/dispatch.py, the same function), so the
    gate's next answer in the same transaction counts it in flight as in a dispatcher's tick."""
    from flows.dispatch import claim_planned

    assert claim_planned(run, at=now, owner="test", until=now + timedelta(hours=1), session=session)


def _start(engine: Engine, names: list[str], now: datetime) -> None:
    with session_scope(engine) as session:
        runs = _runs(session)
        for name in names:
            assert start_gate(runs[name], session=session, now=now) is None, name
            _claim(session, runs[name], now)


def _finish(engine: Engine, names: list[str], state: RunState, at: datetime) -> None:
    with session_scope(engine) as session:
        runs = _runs(session)
        for name in names:
            finish_run(
                runs[name], state, reason="simulated" if state is RunState.failed else "", session=session
            )
            runs[name].finished_at = at


def _ring(status: dict[str, Any], ring: str) -> dict[str, Any]:
    return next(r for r in status["rings"] if r["ring"] == ring)


def _status(engine: Engine, version: str = "9.10.0") -> dict[str, Any]:
    with session_scope(engine) as session:
        return release_status(version, session=session)


def _last_slot(engine: Engine) -> datetime:
    with session_scope(engine) as session:
        return max(run.slot_start for run in _runs(session).values() if run.slot_start)


CANARY, EARLY, BROAD = ["c01", "c02"], ["c03", "c04", "c05", "c06"], [f"c{n:02d}" for n in range(7, 13)]


def test_plan_slots_and_announces_every_cloud_cluster(fleet: Engine) -> None:
    report = _plan(fleet)  # no version: the newest eligible release

    assert report.version == "9.10.0" and report.new_rollout
    assert sorted(report.planned) == CANARY + EARLY + BROAD
    assert list(report.blocked) == ["legacy-c13"] and "no upgrade path" in report.blocked["legacy-c13"]
    with session_scope(fleet) as session:
        runs = _runs(session)
        assert "soft-c14" not in runs and "legacy-c13" not in runs
        notices = {n.update_ref: n for n in session.exec(select(Notice).where(Notice.kind == "scheduled"))}
        emails = {c.id: f"ops@{c.name}.example" for c in session.exec(select(Customer))}
        clusters = {c.name: c for c in session.exec(select(Cluster))}
        for name, run in runs.items():
            assert (run.kind, run.state, run.to_version) == ("cloud_release", RunState.planned, "9.10.0")
            # one ring a day: daily windows, each ring after the previous ring's last slot plus soak
            assert run.slot_start is not None and NOW < run.slot_start < NOW + timedelta(days=4)
            notice = notices[f"update-{run.id}"]  # queued with the run, before its slot
            assert notice.created_at <= run.slot_start
            assert notice.recipients == [emails[clusters[name].customer_id]]
    status = _status(fleet)
    assert [r["ring"] for r in status["rings"]] == ["canary", "early", "broad"]
    assert [_ring(status, r)["planned"] for r in ("canary", "early", "broad")] == [2, 4, 6]
    broad = _ring(status, "broad")
    assert broad["blocked"] == 1 and broad["failed"] == 0 and broad["notified"] == 0
    row = next(r for r in broad["clusters"] if r["cluster"] == "legacy-c13")
    assert row["status"] == "blocked" and "9.7.0" in row["reason"] and row["run_id"] is None
    with session_scope(fleet) as session:  # the outbox delivers: now the customers count as notified
        for notice in session.exec(select(Notice).where(Notice.kind == "scheduled")):
            mark_sent(notice, now=NOW, session=session)
    assert _ring(_status(fleet), "early")["notified"] == 4
    markdown = status_markdown(_status(fleet))
    assert "| broad | 6 | 6 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 1 |" in markdown and "legacy-c13" in markdown


def test_planning_twice_plans_nothing_twice(fleet: Engine) -> None:
    first = _plan(fleet, "9.10.0")
    second = _plan(fleet, "9.10.0", now=NOW + timedelta(hours=1))

    assert len(first.planned) == 12 and second.planned == [] and not second.new_rollout
    assert second.already_planned == 13 and second.blocked == {}
    with session_scope(fleet) as session:
        count = lambda model: session.exec(select(func.count()).select_from(model)).one()  # noqa: E731
        assert (count(Rollout), count(RolloutCluster), count(UpgradeRun)) == (1, 13, 12)
        assert session.exec(select(func.count()).where(Notice.kind == "scheduled")).one() == 12


def test_unknown_or_bad_release_is_refused_clearly(fleet: Engine) -> None:
    with pytest.raises(NotFound, match=r"no release '9\.11\.0'.*did you mean 9\.10\.0"):
        _plan(fleet, "9.11.0")
    with pytest.raises(ValueError, match="'banana' is not a version"):
        _plan(fleet, "banana")
    with pytest.raises(ValueError, match="max_failures or max_failure_rate"):
        _plan(fleet, "9.10.0", max_failures=None)
    with pytest.raises(NotFound, match=r"no rollout of release '9\.10\.0'"):
        _status(fleet)
    with session_scope(fleet) as session:
        assert session.exec(select(func.count()).select_from(UpgradeRun)).one() == 0


def test_gate_keeps_ring_order_and_soaks_between_rings(fleet: Engine) -> None:
    _plan(fleet, soak_minutes=60, max_concurrent=2)
    due = _last_slot(fleet) + timedelta(minutes=1)

    assert _gate(fleet, "c01", due) is None
    assert _gate(fleet, "c03", due) == "waiting for ring canary: 2 of 2 updates not finished"
    assert _gate(fleet, "c07", due) == "waiting for ring canary: 2 of 2 updates not finished"
    _start(fleet, CANARY, due)
    assert _gate(fleet, "c03", due) == "waiting for ring canary: 2 of 2 updates not finished"
    done = due + timedelta(minutes=30)
    _finish(fleet, CANARY, RunState.succeeded, done)
    assert "soaking until" in (_gate(fleet, "c03", done + timedelta(minutes=59)) or "")
    soaked = done + timedelta(minutes=60)
    with session_scope(fleet) as session:  # one dispatcher tick: claims count at once (max_concurrent=2)
        runs = _runs(session)
        answers = {}
        for name in EARLY:
            answers[name] = start_gate(runs[name], session=session, now=soaked)
            if answers[name] is None:
                _claim(session, runs[name], soaked)
    assert list(answers.values()) == [None, None, *["2 updates of this release are in flight (limit 2)"] * 2]
    assert _gate(fleet, "c07", soaked) == "waiting for ring early: 4 of 4 updates not finished"
    status = _ring(_status(fleet), "early")
    assert (status["running"], status["planned"]) == (2, 2)


def test_per_customer_limit(fleet: Engine) -> None:
    _plan(fleet, soak_minutes=0, per_customer_limit=1)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, CANARY, RunState.succeeded, due)
    _start(fleet, EARLY, due)
    _finish(fleet, EARLY, RunState.succeeded, due)
    _start(fleet, ["c07"], due)  # initech
    assert _gate(fleet, "c11", due) == "1 update of this customer is in flight (limit 1)"  # initech too
    assert _gate(fleet, "c08", due) is None  # umbrella


def test_a_halt_alerts_the_sre_with_the_failures_that_tripped_it(fleet: Engine, tmp_path: Path) -> None:
    from inventory.alerts import Alert
    from upkeep.bootstrap import build_runtime
    from upkeep.settings import load_settings

    runtime = build_runtime(load_settings(home=tmp_path / "home"), engine=fleet)
    flow_runtime.configure(runtime)
    try:
        _plan(fleet, max_failures=1, soak_minutes=0)
        due = _last_slot(fleet) + timedelta(minutes=1)
        _start(fleet, CANARY, due)
        _finish(fleet, CANARY, RunState.failed, due + timedelta(minutes=10))
        for _ in range(2):  # asked twice: alerted once
            assert "halted" in (_gate(fleet, "c03", due + timedelta(minutes=20)) or "")
    finally:
        flow_runtime.configure(None)
    with session_scope(fleet) as session:
        runs = _runs(session)
        [alert] = session.exec(select(Alert).where(Alert.kind == "rollout-halted")).all()
    assert "release 9.10.0 rollout halted by its error budget" in alert.subject + alert.body_text
    for name in CANARY:
        assert f"{name}: run {runs[name].id}: simulated" in alert.body_text


def test_budget_halts_the_rollout_and_resume_continues_it(fleet: Engine) -> None:
    _plan(fleet, max_failures=1, soak_minutes=60)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, CANARY, RunState.succeeded, due + timedelta(minutes=10))
    early_at = due + timedelta(minutes=70)
    _start(fleet, EARLY, early_at)
    _finish(fleet, ["c03", "c04"], RunState.failed, early_at + timedelta(minutes=5))
    _finish(fleet, ["c05", "c06"], RunState.succeeded, early_at + timedelta(minutes=5))

    later = early_at + timedelta(days=1)
    for _ in range(2):  # broad never starts; the SRE is told once
        reason = _gate(fleet, "c07", later)
        assert reason and "halted: 2 failures exceed the error budget of 1 (failed: c03, c04)" in reason
    status = _status(fleet)
    assert status["halted"] and "c03, c04" in status["halted_reason"]
    assert (_ring(status, "early")["failed"], _ring(status, "broad")["planned"]) == (2, 6)
    with session_scope(fleet) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "rollout.halted")).all()
        assert len(events) == 1 and events[0].subject == "rollout/9.10.0"
        message = resume_rollout("9.10.0", session=session, now=later, actor="sre")
    assert "2 failure(s) acknowledged" in message
    assert _gate(fleet, "c07", later) is None
    assert not _status(fleet)["halted"]
    with session_scope(fleet) as session, pytest.raises(ValueError, match="not halted"):
        resume_rollout("9.10.0", session=session, now=later)
    _start(fleet, ["c07", "c08"], later)  # after a resume the budget counts afresh: 2 more failures halt
    _finish(fleet, ["c07", "c08"], RunState.failed, later + timedelta(minutes=5))
    assert "halted" in (_gate(fleet, "c09", later + timedelta(minutes=6)) or "")


def test_budget_as_a_failure_rate(fleet: Engine) -> None:
    _plan(fleet, max_failures=None, max_failure_rate=20, soak_minutes=0)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, CANARY, RunState.succeeded, due)
    _start(fleet, EARLY, due)
    _finish(fleet, ["c03"], RunState.failed, due)  # 1 of 6 started: 16.7%, within 20%
    _finish(fleet, ["c04", "c05", "c06"], RunState.succeeded, due)
    assert _gate(fleet, "c07", due) is None
    _start(fleet, ["c07"], due)
    _finish(fleet, ["c07"], RunState.failed, due)  # 2 of 7: 28.6%
    assert "2 of 7 started (28.57%) failed, over the 20% error budget" in (_gate(fleet, "c08", due) or "")


def test_open_p0_case_skips_until_closed_then_replans(fleet: Engine) -> None:
    with session_scope(fleet) as session:
        cluster = session.exec(select(Cluster).where(Cluster.name == "c09")).one()
        customer = session.get(Customer, cluster.customer_id)
        assert customer is not None
        case = cases.open_case(customer=customer, clusters=[cluster], subject="data loss", category="Issue",
                               priority="P0", now=NOW, opened_by="sre", session=session)  # fmt: skip
        ref = case.ref
    report = _plan(fleet)
    assert "c09" not in report.planned and ref in report.skipped["c09"]
    row = next(r for r in _ring(_status(fleet), "broad")["clusters"] if r["cluster"] == "c09")
    assert row["status"] == "skipped" and f"open P0 case {ref}" in row["reason"]
    assert replan_skipped(engine=fleet, now=NOW + timedelta(hours=1)) == []  # still open

    with session_scope(fleet) as session:
        cases.close_case(cases.get_case(ref, session=session), reason="fixed", now=NOW, actor="sre",
                         session=session)  # fmt: skip
    later = NOW + timedelta(hours=2)
    assert replan_skipped(engine=fleet, now=later) == ["c09: planned"]
    with session_scope(fleet) as session:
        run = _runs(session)["c09"]
        assert run.kind == "cloud_release" and run.slot_start and run.slot_start > later
        notice = session.exec(select(Notice).where(Notice.update_ref == f"update-{run.id}")).one()
        assert notice.kind == "scheduled"
    assert _ring(_status(fleet), "broad")["planned"] == 6
    assert replan_skipped(engine=fleet, now=later) == []


def test_a_cluster_with_an_update_of_its_own_is_skipped_until_that_ends_then_replanned(fleet: Engine) -> None:
    """A customer's own update of c09 (planned before the release) holds the cluster: the release skips
    it, naming that update, and plans it once that update ended without upgrading it."""
    from tests.support.runs import planned_run

    with session_scope(fleet) as session:
        cluster = session.exec(select(Cluster).where(Cluster.name == "c09")).one()
        own = planned_run(
            session, cluster, slot_start=NOW + timedelta(days=3), slot_end=NOW + timedelta(days=3, hours=2)
        )
        own_id = own.id
    report = _plan(fleet)
    assert "c09" not in report.planned
    assert report.skipped["c09"].startswith(f"update {own_id} (") and report.skipped["c09"].endswith(
        "is planned; re-slotted once it ends"
    ), report.skipped["c09"]
    assert replan_skipped(engine=fleet, now=NOW + timedelta(hours=1)) == []  # still planned: still skipped

    with session_scope(fleet) as session:
        own = session.get(UpgradeRun, own_id)
        assert own is not None
        finish_run(own, RunState.cancelled, reason="customer withdrew it", session=session)
    later = NOW + timedelta(hours=2)
    assert replan_skipped(engine=fleet, now=later) == ["c09: planned"]
    with session_scope(fleet) as session:
        query = (
            select(UpgradeRun).join(Cluster).where(Cluster.name == "c09", UpgradeRun.kind == "cloud_release")
        )
        [run] = session.exec(query).all()
        assert run.state == RunState.planned and run.slot_start and run.slot_start > later
        notice = session.exec(select(Notice).where(Notice.update_ref == f"update-{run.id}")).one()
        assert notice.kind == "scheduled"


def test_a_deferral_shows_as_deferred(fleet: Engine) -> None:
    from flows.schedule import defer_update

    _plan(fleet)
    with session_scope(fleet) as session:
        run = _runs(session)["c10"]
        assert run.id is not None and run.slot_start is not None
        defer_update(run.id, to=run.slot_start + timedelta(days=2), now=NOW, session=session)
    broad = _ring(_status(fleet), "broad")
    assert (broad["deferred"], broad["planned"]) == (1, 5)
    assert next(r for r in broad["clusters"] if r["cluster"] == "c10")["deferrals"] == 1


def test_no_slot_before_the_deadline_is_blocked_for_the_sre(fleet: Engine) -> None:
    with session_scope(fleet) as session:
        release = session.exec(select(Release).where(Release.version == "9.10.0")).one()
        release.deadline = NOW + timedelta(hours=15)  # 03:00 UTC tomorrow: only the eastern windows fit
        session.add(release)
    report = _plan(fleet)
    assert report.blocked.keys() - {"legacy-c13"} and report.planned
    for name in report.blocked.keys() - {"legacy-c13"}:
        assert "no slot before the release deadline 2026-12-08 03:00 UTC" in report.blocked[name]
    with session_scope(fleet) as session:  # the refused slots left no run and no notice behind
        assert session.exec(select(func.count()).select_from(UpgradeRun)).one() == len(report.planned)
        assert session.exec(select(func.count()).select_from(Notice)).one() == len(report.planned)
    with pytest.raises(ValueError, match="deadline 2026-12-08 03:00 UTC has passed"):
        _plan(fleet, "9.10.0", now=NOW + timedelta(days=1))


def test_newest_eligible_release_skips_past_deadlines(fleet: Engine) -> None:
    with session_scope(fleet) as session:
        release = session.exec(select(Release).where(Release.version == "9.10.0")).one()
        release.deadline = NOW - timedelta(days=1)
        session.add(release)
    with pytest.raises(ValueError, match="no release to roll out"):
        _plan(fleet)  # 9.9.0 is no upgrade for clusters on 9.9.0 (and 9.7.0 has no path to it)


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli(fleet: Engine, monkeypatch: pytest.MonkeyPatch) -> Any:
    from upkeep import cli as cli_module
    from upkeep import cli_common

    monkeypatch.setattr(cli_common, "_opened", {"engine": fleet})
    runner = CliRunner()
    return lambda *args: runner.invoke(cli_module.app, ["release", *args])


def test_cli_release_add_checks_like_the_importer(cli: Any, fleet: Engine) -> None:
    ok = cli("add", "9.11.0", "--package", "releases/p-9.11.0.tar.gz", "--sha256", "cd" * 32,
             "--from", "9.9.0,9.10.0", "--deadline", "2027-01-31T00:00:00Z", "--unverified")  # fmt: skip
    assert ok.exit_code == 0 and "1 created" in ok.output
    bad = cli("add", "9.12.0", "--package", "../etc/passwd", "--sha256", "XYZ", "--from", "9.12.0")
    assert bad.exit_code != 0
    message = str(bad.exception)
    assert "package" in message and "sha256" in message and "9.12.0 is not older than 9.12.0" in message
    changed = cli(
        "add",
        "9.11.0",
        "--package",
        "releases/other.tar.gz",
        "--sha256",
        "cd" * 32,
        "--from",
        "9.9.0",
        "--unverified",
    )
    assert changed.exit_code != 0 and "a release's package never changes" in str(changed.exception)
    with session_scope(fleet) as session:
        versions = set(session.exec(select(Release.version)))
        release = session.exec(select(Release).where(Release.version == "9.11.0")).one()
    assert versions == {"9.9.0", "9.10.0", "9.11.0"} and release.deadline == datetime(2027, 1, 31, tzinfo=UTC)


def test_cli_release_sync_writes_all_entries_or_none(cli: Any, fleet: Engine) -> None:
    index = [
        {"version": "9.11.0", "package": "releases/p-9.11.0.tar.gz", "sha256": "cd" * 32, "from": ["9.10.0"],
         "size": 1234},
        {"version": "9.12.0", "package": "releases/p-9.12.0.tar.gz", "sha256": "ef" * 32, "from": ["9.11.0"]},
    ]  # fmt: skip
    texts = {"releases/index.json": ""}
    served = SimpleNamespace(fileserver=SimpleNamespace(fetch_text=lambda path: texts[path]))
    flow_runtime.configure(lambda: served)  # type: ignore[arg-type,return-value]
    try:
        import json

        texts["releases/index.json"] = json.dumps(
            [*index, {**index[1], "version": "9.13.0", "sha256": "nope"}]
        )
        refused = cli("sync")
        assert refused.exit_code != 0 and "entry 3 (9.13.0): sha256" in str(refused.exception)
        texts["releases/index.json"] = json.dumps(index)
        synced = cli("sync")
        assert synced.exit_code == 0 and "2 created" in synced.output
    finally:
        flow_runtime.configure(None)
    with session_scope(fleet) as session:
        assert set(session.exec(select(Release.version))) == {"9.9.0", "9.10.0", "9.11.0", "9.12.0"}


def test_cli_status_and_resume(cli: Any, fleet: Engine) -> None:
    _plan(fleet)
    shown = cli("status", "9.10.0")
    assert shown.exit_code == 0 and "legacy-c13 (broad) blocked" in shown.output
    with session_scope(fleet) as session:
        slots = {name: run.slot_start for name, run in _runs(session).items()}
    for name, ring in (("c01", "canary"), ("c03", "early"), ("c12", "broad")):  # each slot with its ring
        when = slots[name].strftime("%a %Y-%m-%d %H:%M")  # type: ignore[union-attr]
        assert any(
            ring in line and f" {name} " in line and when in line for line in shown.output.splitlines()
        )
    as_json = cli("status", "9.10.0", "--json")
    assert as_json.exit_code == 0 and '"planned": 6' in as_json.output
    not_halted = cli("resume", "9.10.0")
    assert not_halted.exit_code != 0 and "not halted" in str(not_halted.exception)
    unknown = cli("status", "9.11.0")
    assert unknown.exit_code != 0 and "no rollout of release '9.11.0'" in str(unknown.exception)


# -- the flow itself, under the session's Prefect test harness ----------------------------------------


@pytest.mark.prefect
def test_the_flow_plans_and_publishes_the_status_artifact(
    sqlite_engine: Engine, tmp_path: Path, prefect_harness: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from flows.cloud_release import cloud_release
    from upkeep.bootstrap import build_runtime
    from upkeep.settings import load_settings

    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(_inventory(), sort_keys=False))
    import_inventory(path, engine=sqlite_engine, actor="test")
    runtime = build_runtime(load_settings(home=tmp_path / "home"), engine=sqlite_engine)
    runtime.clock = lambda: NOW
    flow_runtime.configure(runtime)
    try:
        state = cloud_release(max_failures=2, return_state=True)
    finally:
        flow_runtime.configure(None)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["report"]["version"] == "9.10.0" and len(result["report"]["planned"]) == 12
    assert _status(sqlite_engine)["budget"]["max_failures"] == 2
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(  # this run's: the worker's server has other tests' too
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["release-status"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        )
    assert artifacts and "| broad | 6 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 1 |" in str(artifacts[0].data)


def test_announced_slots_respect_ring_order_and_soak(fleet: Engine) -> None:
    """Adversarial pass on #13: no later-ring cluster is announced before the earlier ring's last slot
    ends plus the soak (the gate would hold it there, and the customer's invite would be untrue)."""
    _plan(fleet, soak_minutes=60)
    order = {"canary": 0, "early": 1, "broad": 2}
    with session_scope(fleet) as session:
        members = session.exec(select(RolloutCluster)).all()
        runs = {m.run_id: m.ring for m in members if m.run_id is not None}
        slots = [(order[ring], session.get(UpgradeRun, run_id)) for run_id, ring in runs.items()]
    too_early = [
        (run.id, run.slot_start)
        for rank, run in slots
        for earlier_rank, earlier in slots
        if earlier_rank < rank and run.slot_start < earlier.slot_end + timedelta(minutes=60)  # type: ignore[operator]
    ]
    assert too_early == []


def test_a_halted_rollout_starts_no_carried_over_run_that_changed_nothing(fleet: Engine) -> None:
    """adv51: an early-ring run claimed, then carried over before its first node (the window had no room
    left: flows/product_update.py `_no_room_at_the_start`, the customer told "nothing was changed") is
    planned again with its `started_at` kept. The ring's other runs then fail past the error budget and
    halt the rollout: "no further update of this release starts". The gate let the carried-over run
    through (`started_at` set: as if mid-way), so it started the halted release on a cluster it had not
    touched in its next window."""
    _plan(fleet, max_failures=1, soak_minutes=0)
    due = _last_slot(fleet) + timedelta(minutes=1)
    _start(fleet, CANARY, due)
    _finish(fleet, CANARY, RunState.succeeded, due + timedelta(minutes=10))
    early_at = due + timedelta(minutes=20)
    _start(fleet, EARLY, early_at)
    with session_scope(fleet) as session:  # c05 carried over, nothing done: as flows/outcomes.py writes it
        run = _runs(session)["c05"]
        run.state, run.slot_start = RunState.planned, early_at + timedelta(days=1)
        run.slot_end, run.lease_owner = early_at + timedelta(days=1, hours=1), None
        session.add(run)
    _finish(fleet, ["c03", "c04"], RunState.failed, early_at + timedelta(minutes=5))

    later = early_at + timedelta(days=1, minutes=1)
    assert "halted" in (_gate(fleet, "c07", later) or "")
    assert "halted" in (_gate(fleet, "c05", later) or ""), _gate(fleet, "c05", later)
