"""Product update: one cluster to a newer version, node by node. Reads like the runbook:

    download the package (verified) → pre-flight every node → distribute and verify on every node
    → for each node in order: check, upgrade, wait for health, verify → record the new version

Every step is a named task; every remote action is recorded in the database before and after, so a
crashed run resumes (`run_id=`) where it stopped without upgrading any node twice.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.plan import UpdatePlan, plan_update
from flows.records import node_done
from flows.runtime import current
from flows.steps import NodeConnections, distribute, download, preflight, upgrade_node
from inventory import repo
from inventory.db import session_scope
from inventory.models import RunState
from inventory.runs import create_run, finish_run, get_run


class RunMismatch(ValueError):
    pass


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    try:
        with session_scope(current().engine) as session:
            cluster = repo.get_cluster(params["cluster"], session=session)
            customer = repo.customer_of(cluster, session=session)
            return f"update {customer.name}/{cluster.name} {cluster.version}→{params['to_version']}"
    except Exception:
        return f"update {params.get('cluster')} →{params.get('to_version')}"


@flow(name="product-update", flow_run_name=_flow_run_name, retries=0)
def product_update(
    cluster: str,
    to_version: str,
    source: str = "cli",
    requested_by: str = "",
    run_id: int | None = None,
) -> dict[str, Any]:
    """Upgrade `cluster` to `to_version`; with `run_id`, resume that run instead of starting one."""
    runtime = current()
    log = get_run_logger()
    with session_scope(runtime.engine) as session:
        plan = plan_update(cluster, to_version, session=session)
        if run_id is None:
            run = create_run(
                repo.get_cluster(cluster, session=session),
                to_version=to_version,
                source=source,
                requested_by=requested_by or runtime.actor,
                session=session,
            )
        else:
            run = get_run(run_id, session=session)
            if (
                run.cluster_id != plan.cluster_id
                or run.to_version != to_version
                or not RunState(run.state).active
            ):
                raise RunMismatch(f"run {run_id} is not an active update of {cluster} to {to_version}")
            run.state = RunState.running
            session.add(run)
        assert run.id is not None
        current_run_id = run.id
    log.info("run %s: %s (%d nodes)", current_run_id, plan.label, len(plan.nodes))

    conns = NodeConnections(runtime, plan)
    outcomes: dict[str, str] = {}
    try:
        package = download(plan, current_run_id, runtime)
        preflight(plan, current_run_id, runtime, conns, package.stat().st_size)
        distribute(plan, current_run_id, runtime, conns, package)
        for node in plan.nodes:
            if node_done(runtime.engine, current_run_id, node.id):
                outcomes[node.hostname] = "done before resume"
                continue
            outcomes[node.hostname] = upgrade_node(plan, current_run_id, runtime, conns, node)
            log.info("%s: %s", node.hostname, outcomes[node.hostname])
    except Exception as exc:
        _finish(plan, current_run_id, RunState.failed, reason=str(exc))
        log.error("run %s failed: %s", current_run_id, exc)
        raise
    finally:
        conns.close()
    _finish(plan, current_run_id, RunState.succeeded)
    _report(plan, outcomes)
    return {
        "run_id": current_run_id,
        "cluster": plan.cluster,
        "to_version": plan.to_version,
        "nodes": outcomes,
    }


def _finish(plan: UpdatePlan, run_id: int, state: RunState, reason: str = "") -> None:
    runtime = current()
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        finish_run(run, state, reason=reason, session=session)
        if state is RunState.succeeded:
            cluster = repo.get_cluster(plan.cluster, session=session)
            cluster.version = plan.to_version
            session.add(cluster)


def _report(plan: UpdatePlan, outcomes: dict[str, str]) -> None:
    create_table_artifact(
        key="update-nodes",
        table=[{"node": host, "result": result} for host, result in outcomes.items()],
        description=f"Nodes of {plan.label}",
    )
