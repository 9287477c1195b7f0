"""CLI side of product updates: plan (dry run), run the flow, and show what happened."""

from __future__ import annotations

import getpass

from rich.table import Table
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows.plan import UpdatePlan, plan_update
from inventory.db import session_scope
from inventory.models import UpgradeRun
from inventory.runs import get_run
from upkeep.console import CliError, console, print_json
from upkeep.views import node_rows, run_row


def _plan(cluster: str, to_version: str, engine: Engine) -> UpdatePlan:
    with session_scope(engine) as session:
        return plan_update(cluster, to_version, session=session)


def print_plan(cluster: str, to_version: str, *, engine: Engine, as_json: bool) -> None:
    plan = _plan(cluster, to_version, engine)
    if as_json:
        print_json({"dry_run": True, **plan.as_dict()})
        return
    console.print(f"[bold]plan[/]: update {plan.label} (dry run: nothing is touched)")
    console.print(f"  package  {plan.package} sha256={plan.sha256[:16]}…")
    console.print(f"  access   {'via jump host ' + plan.jump.host if plan.jump else 'direct'}")
    steps = [
        "download and verify the package",
        "pre-flight every node (version, health, disk)",
        "copy the package to every node and verify it there",
    ]
    for number, step in enumerate(steps, 1):
        console.print(f"  {number}. {step}")
    for node in plan.nodes:
        console.print(
            f"  {len(steps) + node.position}. {node.hostname} ({node.user}@{node.address}:{node.port}): "
            f"upgrade {plan.from_version}→{plan.to_version}, wait for health, verify version"
        )


def run_update(cluster: str, to_version: str, *, engine: Engine, as_json: bool) -> int:
    """Run the product-update flow in this process; returns the run id, raises CliError on failure."""
    import prefect

    from flows.product_update import product_update
    from upkeep.bootstrap import quiet_prefect

    plan = _plan(cluster, to_version, engine)  # refuses bad requests before Prefect starts
    tags = [f"customer:{plan.customer}", f"cluster:{plan.cluster}", "source:cli"]
    with quiet_prefect(), prefect.tags(*tags):
        state = product_update(
            cluster=plan.cluster, to_version=to_version, requested_by=getpass.getuser(), return_state=True
        )
    with session_scope(engine) as session:
        run = session.exec(
            select(UpgradeRun)
            .where(UpgradeRun.cluster_id == plan.cluster_id)
            .order_by(col(UpgradeRun.id).desc())
        ).first()
        if run is None or run.id is None:
            raise CliError(f"update of {plan.label} did not start: {state.message}")
        run_id = run.id
    show_run(run_id, engine=engine, as_json=as_json)
    if state.is_failed():
        raise CliError(f"run {run_id} failed: {run.reason or state.message}")
    return run_id


def show_run(run_id: int, *, engine: Engine, as_json: bool) -> None:
    with session_scope(engine) as session:
        try:
            run = get_run(run_id, session=session)
        except LookupError:
            raise CliError(f"no run {run_id} (see `upkeep runs`)") from None
        summary, nodes = run_row(run, session), node_rows(run, session)
    if as_json:
        print_json({**summary, "nodes": nodes})
        return
    console.print(
        f"[bold]run {summary['id']}[/]: {summary['cluster']} {summary['from']}→{summary['to']} "
        f"[bold]{summary['state']}[/]"
    )
    table = Table("node", "before", "after", "seconds", "result")
    for row in nodes:
        table.add_row(
            row["node"],
            row["before"] or "-",
            row["after"] or "-",
            "-" if row["seconds"] is None else f"{row['seconds']:.2f}",
            row["result"],
        )
    console.print(table)
    if summary["reason"]:
        console.print(f"reason: {summary['reason']}", markup=False)
