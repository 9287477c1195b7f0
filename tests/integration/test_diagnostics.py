"""Diagnostics bundles against the real lab: sshd nodes and their agent, nginx with TLS and basic auth,
the Prefect test harness. Nothing is mocked; bundles are downloaded back and checked."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import ssl
import tarfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from flows.diagnostics import collect_diagnostics
from flows.failed_run_case import handle_failed_run
from flows.product_update import product_update
from inventory import cases
from inventory.db import session_scope
from inventory.models import Cluster, Customer, Node, UpgradeRun
from inventory.types import utcnow
from tests.integration.conftest import nodes_of, upkeep_cli
from tests.support.cli import upkeep_in_process

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
STAMP = "%Y-%m-%dT%H:%M:%S.%f+00:00"  # the agent's log format (upkeep/lab/agent.py)


def _hosts(lab: Any, cluster: str) -> list[str]:
    return [node["hostname"] for node in nodes_of(lab, cluster)]


def _append(lab: Any, host: str, lines: list[str], when: datetime | None = None) -> None:
    stamp = (when or utcnow()).astimezone(UTC).strftime(STAMP)
    with open(lab.node_dir(host) / "logs" / "product.log", "a", encoding="utf-8") as log:
        log.writelines(f"{stamp} {host} product[4242]: {line}\n" for line in lines)


def _secrets(host: str) -> dict[str, list[str]]:
    """What gets planted on `host`, by the pattern expected to catch it."""
    tag = host.upper().replace("-", "")[:12].ljust(12, "X")
    return {
        "password": [f"Pw-{host}-s3cret"],
        "bearer": [f"eyJ{host}.payload.sig"],
        "aws_access_key": [f"AKIA{tag}0000"],
        "token": [f"ak-live-{host}"],
        "private_key": [f"MIIEsecretbody{host}{i}" for i in range(3)],
    }


def _plant(lab: Any, host: str) -> None:
    s = _secrets(host)
    _append(lab, host, [
        f"db connect user=app password={s['password'][0]} ok",
        f"GET /api/v1/status Authorization: Bearer {s['bearer'][0]}",
        f"s3 upload with {s['aws_access_key'][0]} done",
        f"config reloaded api_key={s['token'][0]} retries=3",
        "tls material follows -----BEGIN RSA PRIVATE KEY-----",
    ])  # fmt: skip
    with open(lab.node_dir(host) / "logs" / "product.log", "a", encoding="utf-8") as log:
        log.writelines(line + "\n" for line in s["private_key"])  # continuation lines: no stamp
        log.write("-----END RSA PRIVATE KEY-----\n")
    _append(lab, host, ["service healthy after reload"])


def _open_case(engine: Any, cluster: str, priority: str = "P2") -> str:
    with session_scope(engine) as session:
        found = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        customer = session.get(Customer, found.customer_id)
        assert customer is not None
        return cases.open_case(
            customer=customer, clusters=[found], subject="slow API", category="Issue", priority=priority,
            now=utcnow(), opened_by="test", session=session,
        ).ref  # fmt: skip


def _download(lab: Any, url: str) -> bytes:
    overrides = lab.settings_overrides()
    verify = ssl.create_default_context(cafile=overrides["fileserver_ca"])
    auth = (overrides["fileserver_user"], overrides["fileserver_password"])
    with httpx.Client(verify=verify, auth=auth, timeout=30) as client:
        response = client.get(url)
        response.raise_for_status()
        return response.content


def _open_bundle(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    return json.loads(files.pop("manifest.json")), files


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(record.getMessage())


def test_bundle_has_no_secrets_right_counts_and_verified_checksums(
    lab: Any, fresh_cluster: str, lab_runtime: Any
) -> None:
    hosts = _hosts(lab, fresh_cluster)
    old = utcnow() - timedelta(days=2)
    for host in hosts:
        _append(lab, host, ["OLD-LINE password=outside-the-range"], when=old)
        _plant(lab, host)
    ref = _open_case(lab_runtime.engine, fresh_cluster)
    captured = _Captured()
    logging.getLogger("prefect").addHandler(captured)
    try:
        result = collect_diagnostics(
            cluster=fresh_cluster, case=ref, since=utcnow() - timedelta(hours=1), until=utcnow()
        )
    finally:
        logging.getLogger("prefect").removeHandler(captured)

    data = _download(lab, result.url)
    assert hashlib.sha256(data).hexdigest() == result.sha256 and len(data) == result.size
    manifest, files = _open_bundle(data)
    customer = nodes_of(lab, fresh_cluster)[0]["customer"]
    assert result.url.endswith(".tar.gz") and f"/support/{customer}/{ref}/diag-{fresh_cluster}-" in result.url
    assert (manifest["case"], manifest["cluster"], manifest["partial"], manifest["missing"]) == (
        ref, fresh_cluster, False, {}
    )  # fmt: skip
    assert manifest["nodes"] == manifest["collected"] == hosts
    assert sorted(files) == sorted(f["path"] for f in manifest["files"])
    assert {f"{h}/{name}" for h in hosts for name in ("product.log", "metrics.json")} <= set(files)
    for entry in manifest["files"]:
        assert hashlib.sha256(files[entry["path"]]).hexdigest() == entry["sha256"]
        assert len(files[entry["path"]]) == entry["size"]
    expected = {"password": 3, "bearer": 3, "aws_access_key": 3, "token": 3, "private_key": 3}
    assert {k: v for k, v in manifest["redactions"].items() if v} == expected
    assert result.redactions == manifest["redactions"]
    assert manifest["redactions_by_node"] == {h: {k: 1 for k in expected} for h in hosts}
    assert any("bundle https://" in line for line in captured.text)  # the flow's log was captured
    everything = b"".join(files.values()) + json.dumps(manifest).encode() + "\n".join(captured.text).encode()
    for host in hosts:
        assert b"service healthy after reload" in files[f"{host}/product.log"]
        for secret in (s for values in _secrets(host).values() for s in values):
            assert secret.encode() not in everything, secret
    assert b"OLD-LINE" not in everything  # outside the range: the agent left it out
    assert b"[REDACTED private_key]" in files[f"{hosts[0]}/product.log"]

    with session_scope(lab_runtime.engine) as session:
        case = cases.get_case(ref, session=session)
        [bundle] = cases.case_bundles(case, session=session)
        assert (bundle.url, bundle.sha256, bundle.size, bundle.partial, bundle.run_id) == (
            result.url, result.sha256, result.size, False, None
        )  # fmt: skip
        assert bundle.redactions == manifest["redactions"]


def test_failed_upgrade_opens_a_p1_case_with_the_runs_diagnostics(
    lab: Any, fresh_cluster: str, lab_runtime: Any
) -> None:
    second = _hosts(lab, fresh_cluster)[1]
    lab.fault(second, "fail-upgrade")
    try:
        state = product_update(cluster=fresh_cluster, to_version="9.10.0", return_state=True)
    finally:
        lab.fault(second, "clear")
    assert state.is_failed()
    with session_scope(lab_runtime.engine) as session:
        cluster_id = session.exec(select(Cluster.id).where(Cluster.name == fresh_cluster)).one()
        run = session.exec(select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id)).one()

    # The product-update flow may already have called this on its failure path; either way one case
    # holds the run's bundles.
    report = handle_failed_run(run.id or 0, runtime=lab_runtime, now=utcnow())

    assert report.bundle_url and not report.partial and report.error == ""
    manifest, files = _open_bundle(_download(lab, report.bundle_url))
    assert (manifest["case"], manifest["run_id"]) == (report.case_id, run.id)
    assert manifest["range"]["since"] == (run.started_at or run.created_at).isoformat()
    assert b"upgrade failed: simulated fault" in files[f"{second}/product.log"]
    with session_scope(lab_runtime.engine) as session:
        case = cases.get_case(report.case_id, session=session)
        assert (case.priority, case.category, case.queue, case.status) == (
            "P1",
            "issue",
            "Systems Reliability Engineer",
            "new",
        )
        assert str(run.id) in case.subject and fresh_cluster in case.subject
        assert [c.name for c in cases.case_clusters(case, session=session)] == [fresh_cluster]
        bundles = cases.case_bundles(case, session=session)
        assert {b.run_id for b in bundles} == {run.id} and report.bundle_url == bundles[-1].url
        blocking = cases.open_blocking_case(cluster_id, session=session)
        assert blocking is not None and blocking.ref == report.case_id
    again = handle_failed_run(run.id or 0, runtime=lab_runtime, now=utcnow())
    assert again.case_id == report.case_id and again.bundle_url != report.bundle_url

    # An update made for a case: the diagnostics go to that case.
    other = _open_case(lab_runtime.engine, fresh_cluster, priority="P0")
    with session_scope(lab_runtime.engine) as session:
        row = session.get(UpgradeRun, run.id)
        assert row is not None
        row.case_ref = other
        session.add(row)
    linked = handle_failed_run(run.id or 0, runtime=lab_runtime, now=utcnow())
    assert linked.case_id == other and linked.bundle_url and f"/{other}/" in linked.bundle_url


def _cli_env(lab: Any, home: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in lab.settings_overrides().items()})
    env.update({"UPKEEP_HOME": str(home), "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    return env


def _cli_db(lab: Any, home: Path) -> Any:
    from inventory.importer import import_inventory
    from upkeep.database import open_database
    from upkeep.settings import load_settings

    engine = open_database(load_settings(home=home, **lab.settings_overrides()))
    import_inventory(lab.inventory_path, engine=engine, actor="test")
    return engine


def test_a_down_node_gives_a_partial_bundle_and_exit_3(
    lab: Any, fresh_cluster: str, prefect_harness: None, tmp_path: Path
) -> None:
    engine, env = _cli_db(lab, tmp_path / "home"), _cli_env(lab, tmp_path / "home")
    ref = _open_case(engine, fresh_cluster, priority="P0")
    first, down, third = _hosts(lab, fresh_cluster)
    lab.fault(down, "down")
    try:
        args = ["diagnostics", "collect", "--cluster", fresh_cluster, "--case", ref, "--json"]
        result = upkeep_cli(env, *args, check=False)
    finally:
        lab.fault(down, "clear")

    assert result.returncode == 3, result.stderr
    assert "PARTIAL bundle" in result.stderr and down in result.stderr and "Traceback" not in result.stderr
    out = json.loads(result.stdout)
    assert out["partial"] and list(out["missing"]) == [down] and "cannot connect" in out["missing"][down]
    manifest, files = _open_bundle(_download(lab, out["url"]))
    assert manifest["partial"] and manifest["collected"] == [first, third]
    assert manifest["missing"] == {down: out["missing"][down]}
    assert not any(name.startswith(f"{down}/") for name in files)
    shown = json.loads(upkeep_in_process("case", "show", ref, "--json", env=env).stdout)
    assert [(b["url"], b["partial"], b["missing_nodes"]) for b in shown["bundles"]] == [
        (out["url"], True, out["missing"])
    ]


def test_diagnostics_that_reach_no_node_fail_and_upload_nothing(
    lab: Any, fresh_cluster: str, prefect_harness: None, tmp_path: Path
) -> None:
    engine, env = _cli_db(lab, tmp_path / "home"), _cli_env(lab, tmp_path / "home")
    ref = _open_case(engine, fresh_cluster, priority="P1")
    hosts = _hosts(lab, fresh_cluster)
    before = _support_listing(lab)
    for host in hosts:
        lab.fault(host, "down")
    try:
        result = upkeep_cli(
            env, "diagnostics", "collect", "--cluster", fresh_cluster, "--case", ref, check=False
        )
    finally:
        for host in hosts:
            lab.fault(host, "clear")

    assert result.returncode == 1, result.stderr
    assert "reached no node" in result.stderr and "nothing was uploaded" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # Progress, not a terminal: a line per event, each node's collection started and failed (#16).
    for host in hosts:
        assert f"{ref} {host} collect started" in result.stdout, result.stdout
        assert f"{ref} {host} collect failed after " in result.stdout, result.stdout
    assert _support_listing(lab) == before
    assert json.loads(upkeep_in_process("case", "show", ref, "--json", env=env).stdout)["bundles"] == []


def _collect_lines(lab: Any, host: str) -> int:
    log = lab.node_dir(host) / "logs" / "product.log"
    return log.read_text().count(" logs collect ") if log.exists() else 0


def _support_listing(lab: Any) -> list[str]:
    return sorted(
        str(p.relative_to(lab.fileserver_root)) for p in (lab.fileserver_root / "support").rglob("*")
    )


def test_unsafe_case_ids_and_customer_names_are_refused_before_any_connection(
    lab: Any, lab_runtime: Any, tmp_path: Path
) -> None:
    victim = lab.status()["nodes"][-1]
    cluster = victim["cluster"]
    before, listing = _collect_lines(lab, victim["hostname"]), _support_listing(lab)
    for bad in ("../../etc", "CASE-1/../../x", "CASE-1;id", "$(touch /tmp/pwned)", "CASE-1 "):
        state = collect_diagnostics(cluster=cluster, case=bad, return_state=True)
        assert state.is_failed() and "is not CASE-<digits>" in str(state.message), bad
    with session_scope(lab_runtime.engine) as session:
        for name in ("../../etc", "acme;id", "a/b", "$(id)"):
            customer = Customer(name=name, timezone="UTC")
            session.add(customer)
            session.flush()
            evil = Cluster(customer_id=customer.id or 0, name=f"evil-{customer.id}", version="9.8.0")
            session.add(evil)
            session.flush()
            user = lab.status()["jump"]["user"]
            node = Node(cluster_id=evil.id or 0, hostname=victim["hostname"], address="127.0.0.1",
                        port=victim["port"], ssh_user=user, position=1)  # fmt: skip
            session.add(node)
    for name in ("../../etc", "acme;id", "a/b", "$(id)"):
        with session_scope(lab_runtime.engine) as session:
            customer = session.exec(select(Customer).where(Customer.name == name)).one()
            evil = session.exec(select(Cluster).where(Cluster.customer_id == customer.id)).one()
            case = cases.open_case(customer=customer, clusters=[evil], subject="x", category="Issue",
                                   priority="P3", now=utcnow(), opened_by="t", session=session)  # fmt: skip
        state = collect_diagnostics(cluster=evil.name, case=case.ref, return_state=True)
        assert state.is_failed() and f"customer {name!r} cannot be used in a file-server path" in str(
            state.message
        )

    assert _collect_lines(lab, victim["hostname"]) == before  # no node was asked for anything
    assert _support_listing(lab) == listing  # nothing was uploaded
    env = _cli_env(lab, tmp_path / "home")
    _cli_db(lab, tmp_path / "home")
    refused = upkeep_cli(
        env, "diagnostics", "collect", "--cluster", cluster, "--case", "../../etc", check=False
    )
    assert refused.returncode == 1 and "is not CASE-<digits>" in refused.stderr
    assert "Traceback" not in refused.stderr


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_200_mb_log_streams_with_flat_memory(lab: Any, fresh_cluster: str, lab_runtime: Any) -> None:
    host = _hosts(lab, fresh_cluster)[0]
    stamp = utcnow().strftime(STAMP)
    lines = [f"{stamp} {host} product[7]: request id={i:08d} path=/api/v1/items/{i % 5003} status=200 "
             f"took={i % 997}ms client=10.{i % 250}.{i % 7}.{i % 13}\n" for i in range(7000)]  # fmt: skip
    block = "".join(lines).encode()[: (1 << 20) - 80]
    block = block[: block.rfind(b"\n") + 1] + f"{stamp} {host} app: password=hunter2-in-block\n".encode()
    with open(lab.node_dir(host) / "logs" / "product.log", "ab") as log:
        for _ in range(200):
            log.write(block)
    ref = _open_case(lab_runtime.engine, fresh_cluster)
    lab_runtime.command_timeout = 180.0  # the agent filters and gzips 200 MB on a busy 2-core machine
    peak, stop = [_rss()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(max(peak[-1], _rss()))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    baseline = _rss()
    sampler.start()
    started = time.monotonic()
    try:
        result = collect_diagnostics(cluster=fresh_cluster, case=ref, nodes=[host])
    finally:
        stop.set()
        sampler.join()
        (lab.node_dir(host) / "logs" / "product.log").write_bytes(b"")  # pytest keeps old tmp dirs
    growth = peak[-1] - baseline
    assert growth < 60 << 20, f"RSS grew {growth / 2**20:.0f} MB collecting a 200 MB log"
    assert result.redactions["password"] == 200 and not result.partial and result.nodes == [host]
    uploaded = lab.fileserver_root / result.url.split("/", 3)[3]
    assert hashlib.sha256(uploaded.read_bytes()).hexdigest() == result.sha256
    print(f"200 MB: {time.monotonic() - started:.1f} s, RSS +{growth / 2**20:.1f} MB, bundle {result.size} B")
