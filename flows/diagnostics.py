"""Diagnostics bundles for support cases (the case a failed run opens: flows.failed_run_case).

    check every input (before any connection) → on each node, in parallel (bounded): collect the logs
    for the time range, fetch them, redact secrets → pack a .tar.gz with manifest.json → upload it to
    support/<customer>/<case>/<bundle>.tar.gz (never overwrites) → record it with the case

A node that is down or times out does not stop the others: the bundle is then partial and its manifest
(and the DiagnosticsBundle row) names each missing node and why.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from sqlalchemy.engine import Engine

from flows.plan import node_target
from flows.runtime import Runtime, current
from inventory import cases, repo
from inventory.db import session_scope
from inventory.models import Cluster, Node
from inventory.types import utcnow
from tasks.diagnostics import (
    PATTERN_NAMES,
    BundleFile,
    DiagnosticsRefused,
    Redactor,
    fetch_node_logs,
    pack_bundle,
    redact_archive,
    redact_text,
    safe_segment,
    support_path,
)
from tasks.ssh import CommandTimeout, RemoteError, SshTarget

MAX_PARALLEL = 8
DEFAULT_SPAN = timedelta(hours=24)
FORMAT = "upkeep-diagnostics/1"


@dataclass(frozen=True)
class Request:
    customer: str
    cluster: str
    cluster_id: int
    case: str
    since: datetime
    until: datetime
    targets: list[SshTarget]
    run_id: int | None


@dataclass
class NodeCollected:
    hostname: str
    files: list[BundleFile] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class CollectResult:
    case: str
    bundle_id: int
    url: str
    sha256: str
    size: int
    partial: bool
    nodes: list[str]
    missing: dict[str, str]
    redactions: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reached_no_node(self) -> bool:
        """Every node failed: nothing was bundled or uploaded (`url` is empty)."""
        return not self.url

    def no_node_reason(self) -> str:
        why = "; ".join(f"{host}: {error}" for host, error in self.missing.items())
        return f"diagnostics reached no node ({why}); nothing was uploaded to {self.case}"


def resolve_request(
    cluster: str,
    case: str,
    since: datetime | None,
    until: datetime | None,
    nodes: list[str] | None,
    *,
    now: datetime,
    engine: Engine,
    run_id: int | None,
) -> Request:
    """Every input checked and looked up, before anything is connected to; changes nothing."""
    cases.check_case_ref(case)
    end = until or now
    start = since or end - DEFAULT_SPAN
    for name, when in (("since", start), ("until", end)):
        if when.tzinfo is None or when.utcoffset() is None:
            raise DiagnosticsRefused(f"{name} {when.isoformat()} has no time zone")
    if start >= end:
        raise DiagnosticsRefused(f"since {start.isoformat()} is not before until {end.isoformat()}")
    with session_scope(engine) as session:
        found = repo.get_cluster(cluster, session=session)
        customer = repo.customer_of(found, session=session)
        the_case = cases.get_case(case, session=session)
        safe_segment(customer.name, "customer")
        safe_segment(found.name, "cluster")
        if the_case.customer_id != customer.id:
            raise cases.CaseError(f"{case} is not a case of {customer.name}, the owner of {found.name}")
        all_nodes = repo.cluster_nodes(found, session=session)
        known = {n.hostname for n in all_nodes}
        unknown = sorted(set(nodes or []) - known)
        if unknown:
            raise repo.NotFound(f"{found.name} has no node {', '.join(unknown)} (nodes: {', '.join(known)})")
        targets = [_target(found, n) for n in all_nodes]
        assert found.id is not None
        return Request(
            customer=customer.name,
            cluster=found.name,
            cluster_id=found.id,
            case=the_case.ref,
            since=start,
            until=end,
            targets=[t for t in targets if not nodes or t.name in nodes],
            run_id=run_id,
        )


def _target(cluster: Cluster, node: Node) -> SshTarget:
    safe_segment(node.hostname, "hostname")  # it names a file in the bundle
    return node_target(cluster, node)


@task(name="collect", task_run_name="collect {target.name}", cache_policy=NO_CACHE)
def collect_node(
    target: SshTarget, since: datetime, until: datetime, staging: Path, runtime: Runtime
) -> NodeCollected:
    """One node's logs, fetched and redacted into staging/<hostname>/. Never raises: a failure is the
    node's `error` (redacted), so the other nodes' bundle still goes out."""
    host, redactor = target.name, Redactor()
    archive = staging / f".{host}.tar.gz"
    runtime.tell(host, "collect", "started")
    try:
        runner = runtime.connect(target)
        try:
            fetch_node_logs(runner, since=since, until=until, dest=archive, timeout=runtime.command_timeout)
        finally:
            runner.close()
        runtime.tell(host, "collect", "succeeded")
        runtime.tell(host, "redact", "started")
        files = redact_archive(archive, staging / host, host, redactor)
    except Exception as exc:
        shutil.rmtree(staging / host, ignore_errors=True)
        reason = _reason(host, exc)
        runtime.tell(host, "collect", "failed", reason)
        return NodeCollected(host, error=reason)
    finally:
        archive.unlink(missing_ok=True)
    runtime.tell(host, "redact", "succeeded", f"{len(files)} files")
    return NodeCollected(host, files, {k: v for k, v in redactor.counts.items() if v})


def _reason(host: str, exc: Exception) -> str:
    text = str(exc).removeprefix(f"{host}: ")
    if isinstance(exc, CommandTimeout):
        text = f"timed out: {text}"
    elif not isinstance(exc, RemoteError):
        text = f"{type(exc).__name__}: {text}"
    return redact_text(text).strip()[:500]


@task(name="pack", cache_policy=NO_CACHE)
def pack(req: Request, name: str, results: list[NodeCollected], work: Path) -> tuple[Path, str, int]:
    files = [f for r in results for f in r.files]
    manifest = {
        "format": FORMAT,
        "bundle": name,
        "case": req.case,
        "customer": req.customer,
        "cluster": req.cluster,
        "run_id": req.run_id,
        "created_at": utcnow().isoformat(),
        "range": {"since": req.since.isoformat(), "until": req.until.isoformat()},
        "nodes": [r.hostname for r in results],
        "collected": [r.hostname for r in results if not r.error],
        "missing": {r.hostname: r.error for r in results if r.error},
        "partial": any(r.error for r in results),
        "files": [asdict(f) for f in files],
        "redactions": _totals(results),
        "redactions_by_node": {r.hostname: r.redactions for r in results if not r.error},
    }
    local = work / f"{name}.tar.gz"
    sha256, size = pack_bundle(local, manifest, [(work / "nodes" / f.path, f.path) for f in files])
    return local, sha256, size


@task(name="upload", cache_policy=NO_CACHE)
def upload(local: Path, path: str, runtime: Runtime) -> str:
    return runtime.fileserver.upload(local, path)


def _totals(results: list[NodeCollected]) -> dict[str, int]:
    return {name: sum(r.redactions.get(name, 0) for r in results) for name in PATTERN_NAMES}


@flow(
    name="collect-diagnostics",
    flow_run_name="diagnostics {cluster} {case}",
    # Threads, at most MAX_PARALLEL nodes at once. (Prefect types TaskRunner invariantly: mypy-only ignore.)
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL),  # type: ignore[arg-type]
)
def collect_diagnostics(
    cluster: str,
    case: str,
    since: datetime | None = None,
    until: datetime | None = None,
    nodes: list[str] | None = None,
    run_id: int | None = None,
) -> CollectResult:
    """Collect, redact, pack and upload `cluster`'s logs for [since, until] (default: the last 24 h)
    to `case`; with `nodes`, only those nodes."""
    runtime, log, now = current(), get_run_logger(), utcnow()
    req = resolve_request(cluster, case, since, until, nodes, now=now, engine=runtime.engine, run_id=run_id)
    name = f"diag-{req.cluster}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    remote = support_path(req.customer, req.case, name)
    (runtime.work_dir / "diagnostics").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=runtime.work_dir / "diagnostics"))
    try:
        (work / "nodes").mkdir()
        futures = [collect_node.submit(t, req.since, req.until, work / "nodes", runtime) for t in req.targets]
        results = [future.result() for future in futures]
        for result in results:
            if result.error:
                log.warning("%s: missing from the bundle: %s", result.hostname, result.error)
            else:
                log.info("%s: %d files, redactions %s", result.hostname, len(result.files), result.redactions)
        if results and all(result.error for result in results):
            # Nothing to bundle: no empty bundle goes to the case. Returned, not raised, so the CLI
            # says it in one line (exit 1) instead of Prefect logging a traceback.
            missing = {r.hostname: r.error for r in results}
            log.error("no node reached; nothing uploaded")
            return CollectResult(req.case, 0, "", "", 0, True, [t.name for t in req.targets], missing, {})
        runtime.tell("(bundle)", "pack", "started")
        local, sha256, size = pack(req, name, results, work)
        runtime.tell("(bundle)", "upload", "started")
        url = upload(local, remote, runtime)
        runtime.tell("(bundle)", "upload", "succeeded", f"{size} bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missing = {r.hostname: r.error for r in results if r.error}
    with session_scope(runtime.engine) as session:
        case_row = cases.get_case(req.case, session=session)
        assert case_row.id is not None
        row = cases.DiagnosticsBundle(
            case_id=case_row.id, run_id=req.run_id, cluster_id=req.cluster_id, url=url, sha256=sha256,
            size=size, missing_nodes=missing, redactions=_totals(results), created_at=utcnow(),
        )  # fmt: skip
        bundle = cases.attach_bundle(case_row, row, actor=runtime.actor, session=session)
        assert bundle.id is not None
    log.info("bundle %s (%d bytes, %s)", url, size, "PARTIAL" if missing else "complete")
    return CollectResult(
        case=req.case,
        bundle_id=bundle.id,
        url=url,
        sha256=sha256,
        size=size,
        partial=bool(missing),
        nodes=[t.name for t in req.targets],
        missing=missing,
        redactions=_totals(results),
    )
