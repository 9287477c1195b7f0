"""The Prefect API unreachable for a while during a run (issue #9): no node upgraded twice or skipped,
the run's record right, every notice sent once.

`upkeep update` runs in a subprocess against the session's Prefect test server, reached only through
a proxy the test controls (tests/faults/netfaults.py). When a node's upgrade starts, the proxy goes
down: live connections reset, new ones refused (the server process gone) or accepted and never
answered (a partition). Our database is the record of a run, so losing the API may cost the Prefect
UI its view of the run, never the run.

What the client does (Prefect 3.8, prefect/client/base.py): a request that fails to connect or read
is retried PREFECT_CLIENT_MAX_RETRIES times (default 5) after 2, 4, 8, 16, 32 s (±20 % jitter), so
about a minute; refused connections only once the client has connected before. Task-run states go
out as events from a background worker, and so do logs: neither blocks a run. What does block the flow
is every synchronous API call it makes: artifacts, and, for a task run with tags, the acquisition of
a concurrency slot per tag at its start (PrefectHQ/prefect#19367: made even when no limit exists).

Variants: a short outage the client's retries cover (default settings), and outages past the retries
(PREFECT_CLIENT_MAX_RETRIES=1, so that "past the retries" takes seconds here, not minutes).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows.notify import deliver_pending
from inventory.db import make_engine, migrate, session_scope
from inventory.importer import import_inventory
from inventory.models import Cluster, Node, NodeStep, StepState, UpgradeRun
from inventory.outbox import Notice, NoticeState
from inventory.run_report import node_rows
from inventory.types import utcnow
from tests.faults.helpers import TARGET, hosts, runs_of, sent_message_ids, steps_of, wait_for
from tests.faults.netfaults import CuttableProxy, OutageMode
from tests.integration.conftest import upkeep_cli
from tests.integration.test_notices import SmtpServer
from tests.support import forkserver
from tests.support.labs import running_lab

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.prefect, pytest.mark.smtp]
AREA = "Prefect API"
SENDER = "Upkeep <upkeep@vendor.example>"
LAB_CLUSTERS = 6


@pytest.fixture(scope="module")
def api_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Upgrades long enough (0.6 s) for an outage to start inside one."""
    with running_lab(
        tmp_path_factory.mktemp("apilab"),
        clusters=LAB_CLUSTERS,
        nodes=3,
        upgrade_seconds=0.6,
        health_delay=0.3,
    ) as lab:
        yield lab


_cluster_numbers = iter(range(LAB_CLUSTERS))


@dataclass
class ApiSetup:
    env: dict[str, str]
    engine: Engine
    proxy: CuttableProxy
    cluster: str


@pytest.fixture
def api(api_lab: Any, prefect_harness: None, smtp: SmtpServer, tmp_path: Path) -> Iterator[ApiSetup]:
    """CLI environment (own home and SQLite database, a fresh lab cluster, the SMTP server) whose
    Prefect API URL is a proxy in front of the session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    server = urlsplit(str(PREFECT_API_URL.value()))
    assert server.port is not None
    home = tmp_path / "home"
    home.mkdir()
    with CuttableProxy(server.port) as proxy:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
        env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in api_lab.settings_overrides().items()})
        env.update(
            {
                "UPKEEP_HOME": str(home),
                "UPKEEP_HEALTH_TIMEOUT": "10",
                "UPKEEP_SMTP_HOST": "127.0.0.1",
                "UPKEEP_SMTP_PORT": str(smtp.port),
                "UPKEEP_MAIL_FROM": SENDER,
                "PREFECT_API_URL": urlunsplit(server._replace(netloc=f"127.0.0.1:{proxy.port}")),
                "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
        )
        engine = make_engine(f"sqlite:///{home / 'upkeep.db'}")
        migrate(engine)
        import_inventory(api_lab.inventory_path, engine=engine, actor="test")
        clusters = list(dict.fromkeys(node["cluster"] for node in api_lab.status()["nodes"]))
        try:
            yield ApiSetup(env, engine, proxy, clusters[next(_cluster_numbers)])
        finally:
            engine.dispose()


def step_began(engine: Engine, step: str, position: int) -> Callable[[], bool]:
    def began() -> bool:
        with session_scope(engine) as session:
            query = (
                select(NodeStep.id)
                .join(Node, col(Node.id) == col(NodeStep.node_id))
                .where(NodeStep.step == step, Node.position == position)
            )
            return session.exec(query).first() is not None

    return began


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess[str]
    down_at: datetime
    up_at: datetime

    def why(self) -> str:
        return f"exit {self.proc.returncode}\n{self.proc.stdout[-2000:]}\n{self.proc.stderr[-4000:]}"


def run_with_outage(
    api: ApiSetup,
    args: list[str],
    when: Callable[[], bool],
    seconds: float | None,
    mode: OutageMode = "refuse",
    env: dict[str, str] | None = None,
) -> Outcome:
    """`upkeep ARGS`, with the API taken away for `seconds` once `when()` is true (None: until the
    process has ended)."""
    proc = forkserver.popen(args, env=env or api.env, stdin=None)
    try:
        wait_for(when, "the moment of the outage", timeout=120)
        down_at = utcnow()
        if seconds is None:
            api.proxy.down(mode)
            out, err = proc.communicate(timeout=300)
            api.proxy.up()
        else:
            restored = api.proxy.outage(seconds, mode)
            out, err = proc.communicate(timeout=300)
            restored.join()
        return Outcome(subprocess.CompletedProcess(args, proc.returncode, out, err), down_at, utcnow())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def steps_during(engine: Engine, run_id: int, start: datetime, end: datetime) -> list[str]:
    """'host:step' of every step of the run that began while the API was down."""
    return [f"{host}:{step}" for host, step, began in _step_times(engine, run_id) if start <= began <= end]


def _step_times(engine: Engine, run_id: int) -> list[tuple[str, str, datetime]]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(Node.hostname, NodeStep.step, NodeStep.started_at)
            .join(Node, col(Node.id) == col(NodeStep.node_id))
            .where(NodeStep.run_id == run_id)
            .order_by(col(NodeStep.id))
        ).all()
    return [(host, step, began) for host, step, began in rows]


def assert_upgraded_exactly_once(api: ApiSetup, lab: Any, smtp: SmtpServer, why: str) -> UpgradeRun:
    """Every node upgraded once (its agent's own log), the record agrees, and after delivery every
    customer notice of the run arrived exactly once."""
    logs = {host: lab.upgrade_log(host) for host in hosts(lab, api.cluster)}
    assert {h: len(entries) for h, entries in logs.items()} == dict.fromkeys(logs, 1), why
    assert {entries[0]["to"] for entries in logs.values()} == {TARGET}
    (run,) = runs_of(api.engine, api.cluster)
    assert run.state == "succeeded" and run.active_cluster_id is None and run.finished_at, why
    with session_scope(api.engine) as session:
        assert session.exec(select(Cluster.version).where(Cluster.name == api.cluster)).one() == TARGET
        verified = Counter(
            session.exec(
                select(NodeStep.node_id).where(
                    NodeStep.run_id == run.id,
                    NodeStep.step == "verify",
                    NodeStep.state == StepState.succeeded,
                )
            ).all()
        )
        assert sorted(verified.values()) == [1, 1, 1], why
        fresh = session.get(UpgradeRun, run.id)
        assert fresh is not None
        assert {row["result"] for row in node_rows(fresh, session)} == {"upgraded"}, why
    failed = [s for s in steps_of(api.engine, run.id or 0) if s[2] != "succeeded"]
    assert not failed, f"{failed}\n{why}"

    # Delivered here rather than by `upkeep notices send`: one process less per test.
    report = deliver_pending(api.engine, smtp.transport(), now=utcnow(), sender=SENDER)
    assert not report.transport_error and not report.failed, report
    with session_scope(api.engine) as session:
        notices = session.exec(select(Notice)).all()
        kinds = Counter((n.update_ref, n.kind) for n in notices)
        assert dict(kinds) == {(f"update-{run.id}", "started"): 1, (f"update-{run.id}", "completed"): 1}
        assert {n.state for n in notices} == {NoticeState.sent}
        expected_ids = sent_message_ids(session, [n.idempotency_key for n in notices])
    assert smtp.handler.ids() == expected_ids
    return run


def test_short_outage_during_an_upgrade_is_ridden_out_by_the_client_retries(
    api: ApiSetup, api_lab: Any, smtp: SmtpServer, record: Any
) -> None:
    """5 s refused while node 1 upgrades: the client's retries (2 s, then 4 s) cover it."""
    started = time.monotonic()
    outcome = run_with_outage(
        api, ["update", api.cluster, "--to", TARGET], step_began(api.engine, "upgrade", 1), seconds=5
    )
    assert outcome.proc.returncode == 0, outcome.why()
    run = assert_upgraded_exactly_once(api, api_lab, smtp, outcome.why())
    record(
        AREA,
        "API refused for 5 s from node 1's upgrade on (client retries cover it)",
        detail=f"run {run.id} succeeded in {time.monotonic() - started:.0f} s; every node upgraded once",
    )


def test_outage_past_the_client_retries_costs_the_ui_its_view_not_the_run(
    api: ApiSetup, api_lab: Any, smtp: SmtpServer, record: Any
) -> None:
    """10 s refused from node 1's upgrade on, 1 client retry: the progress artifact after node 1 fails
    for good, and node 2's task run starts while the API is still away. Each once failed the run
    (customer told, P1 case, `upkeep resume` refusing the failed run): the artifact because it
    raised, the task run because its tags made it ask the API for concurrency slots first."""
    env = {**api.env, "PREFECT_CLIENT_MAX_RETRIES": "1"}
    outcome = run_with_outage(
        api,
        ["update", api.cluster, "--to", TARGET],
        step_began(api.engine, "upgrade", 1),
        seconds=10,
        env=env,
    )
    assert outcome.proc.returncode == 0, outcome.why()
    assert "Prefect UI: progress 1/3 not written" in outcome.proc.stderr, outcome.why()
    run = assert_upgraded_exactly_once(api, api_lab, smtp, outcome.why())
    # The run went on without the API: node 2's steps began while it was away.
    during = steps_during(api.engine, run.id or 0, outcome.down_at, outcome.up_at)
    node2 = hosts(api_lab, api.cluster)[1]
    assert f"{node2}:upgrade" in during, f"{during}\n{outcome.why()}"
    record(
        AREA,
        "API refused for 10 s from node 1's upgrade on, past the client's retries",
        detail=f"run {run.id} succeeded; node 2 upgraded during the outage ({', '.join(during)}); "
        "the UI missed the progress after node 1 (a warning says so)",
    )


def test_api_down_when_the_update_starts_creates_no_run_and_the_next_update_finishes_it(
    api: ApiSetup, api_lab: Any, smtp: SmtpServer, record: Any
) -> None:
    """Refused from the start: the Prefect API does not answer. One clear line, no run created (a
    run left `planned` used to make the next `update` refuse), no node touched; the same `upkeep
    update` once the API answers carries it out. It was a 100-line traceback, then a stuck run."""
    env = {**api.env, "PREFECT_CLIENT_MAX_RETRIES": "0"}
    api.proxy.down("refuse")
    try:
        refused = upkeep_cli(env, "update", api.cluster, "--to", TARGET, check=False)
    finally:
        api.proxy.up()
    assert runs_of(api.engine, api.cluster) == []
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr[-3000:]
    assert "does not answer" in lines[0] and "nothing was started" in lines[0], lines[0]
    assert f"127.0.0.1:{api.proxy.port}/api" in lines[0]
    assert [len(api_lab.upgrade_log(host)) for host in hosts(api_lab, api.cluster)] == [0, 0, 0]

    again = upkeep_cli(api.env, "update", api.cluster, "--to", TARGET, check=False)
    why = f"{lines[0]}\n{again.stdout[-2000:]}{again.stderr[-3000:]}"
    assert again.returncode == 0, why
    assert_upgraded_exactly_once(api, api_lab, smtp, why)
    record(
        AREA,
        "API refused when `upkeep update` starts: no run created; the next `update` carries it out",
        detail=f"one line: {lines[0][:160]}; the next update upgraded every node once",
    )


def test_api_down_as_the_run_ends_reports_the_run_as_the_database_has_it(
    api: ApiSetup, api_lab: Any, smtp: SmtpServer, record: Any
) -> None:
    """Refused from the last node's verification on until the process ends, no client retries: the
    UI artifacts and the flow run's final state cannot be written. The run succeeded and the CLI
    says so (exit 0, a note about the UI). It was exit 1 and the CLI's own traceback, for a run
    that had succeeded."""
    env = {**api.env, "PREFECT_CLIENT_MAX_RETRIES": "0"}
    last_verify = step_began(api.engine, "verify", 3)
    args = ["update", api.cluster, "--to", TARGET]
    outcome = run_with_outage(api, args, last_verify, seconds=None, env=env)
    assert outcome.proc.returncode == 0, outcome.why()
    # Prefect's own log shows the exception; the CLI's verdict comes from our record.
    assert "the Prefect UI may show its flow run unfinished" in outcome.proc.stderr, outcome.why()
    assert "succeeded" in outcome.proc.stdout, outcome.why()
    run = assert_upgraded_exactly_once(api, api_lab, smtp, outcome.why())
    record(
        AREA,
        "API refused from the last node's verification on, until the CLI has exited",
        detail=f"run {run.id} succeeded, exit 0; the CLI notes the UI may show the flow run unfinished",
    )
