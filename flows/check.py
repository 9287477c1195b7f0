"""`upkeep update --check`: the real pre-flight of an update, touching nothing (Ansible's `--check`).

It asks what the product-update flow's pre-flight asks - the file server has the package, every node
answers over its access path, is healthy, at a version the update expects, with disk for the package -
and what `upkeep update` would refuse on (another update active on the cluster, a cluster limit that
grants no slot). Unlike the flow it
records nothing: no run row, no step, no audit, no notice; nothing is copied or started on a node
(only read-only agent commands: version, health, disk free)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import BaseModel
from sqlmodel import select

from flows.plan import PlannedNode, UpdatePlan
from flows.runtime import Runtime
from flows.steps import NodeConnections
from inventory.db import session_scope
from inventory.models import UpgradeRun


class CheckItem(BaseModel):
    """One thing checked: `what` (file-server, cluster, or a node's hostname), `ok`, what was found."""

    what: str
    ok: bool
    detail: str


class UpdateCheck(BaseModel):
    check: Literal[True] = True
    customer: str
    cluster: str
    from_version: str
    to_version: str
    ok: bool
    checks: list[CheckItem]


def check_update(plan: UpdatePlan, runtime: Runtime) -> UpdateCheck:
    """Every pre-flight check of `plan`, each reported (none stops the others)."""
    package, size = _package(plan, runtime)
    items = [_active_update(plan, runtime), package, *_cluster_limit(runtime)]
    conns = NodeConnections(runtime, plan)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(plan.nodes)))) as pool:
            items += list(pool.map(lambda node: _node(plan, conns, node, size), plan.nodes))
    finally:
        conns.close()
    return UpdateCheck(
        customer=plan.customer,
        cluster=plan.cluster,
        from_version=plan.from_version,
        to_version=plan.to_version,
        ok=all(item.ok for item in items),
        checks=items,
    )


def _active_update(plan: UpdatePlan, runtime: Runtime) -> CheckItem:
    with session_scope(runtime.engine) as session:
        other = session.exec(
            select(UpgradeRun).where(UpgradeRun.active_cluster_id == plan.cluster_id)
        ).first()
        if other is None:
            return CheckItem(what="cluster", ok=True, detail="no other update active")
        return CheckItem(
            what="cluster",
            ok=False,
            detail=f"update-{other.id} ({other.from_version}→{other.to_version}) is {other.state}; "
            "`upkeep update` would be refused",
        )


def _cluster_limit(runtime: Runtime) -> list[CheckItem]:
    """UPKEEP_CLUSTER_LIMIT naming a limit that grants no slot (none of that name, or 0: the fleet's
    brake): `upkeep update` refuses (upkeep/updates.py `cluster_limit_grants`). No item without the
    setting; one API read with it (the API away: not ok, as `upkeep update` then refuses; adv40)."""
    from flows.product_update import limit_unusable

    name = runtime.cluster_limit
    if not name:
        return []
    why = limit_unusable(name, away=True, within=runtime.prefect_answer_seconds)
    return [CheckItem(what="cluster-limit", ok=not why, detail=why or f"{name!r} grants slots")]


def _package(plan: UpdatePlan, runtime: Runtime) -> tuple[CheckItem, int]:
    """The package on the file server (HEAD: nothing downloaded) and its size, 0 when unknown."""
    try:
        size = runtime.fileserver.size(plan.package)
    except Exception as exc:
        return CheckItem(what="file-server", ok=False, detail=" ".join(str(exc).split())), 0
    return CheckItem(what="file-server", ok=True, detail=f"{plan.package}: {size} bytes"), size


def _node(plan: UpdatePlan, conns: NodeConnections, node: PlannedNode, package_size: int) -> CheckItem:
    """The flow's pre-flight questions (flows.steps.preflight), asked without recording a step."""
    try:
        agent = conns.agent(node)
        version, health, free = agent.version(), agent.health(), agent.disk_free()
    except Exception as exc:
        detail = " ".join(str(exc).split()).removeprefix(f"{node.hostname}: ")
        return CheckItem(what=node.hostname, ok=False, detail=detail)
    found = f"version {version}, {health.detail}, {free} bytes free"
    problems = []
    if version not in (plan.from_version, plan.to_version):
        problems.append(f"at {version}, expected {plan.from_version}")
    if not health.healthy:
        problems.append(f"not healthy ({health.detail})")
    if package_size and free < 2 * package_size:
        problems.append(f"{free} bytes free, needs {2 * package_size} for the package")
    if problems:
        return CheckItem(what=node.hostname, ok=False, detail="; ".join(problems))
    already = " (already upgraded)" if version == plan.to_version else ""
    return CheckItem(what=node.hostname, ok=True, detail=found + already)
