"""`--on-worker` (issue #16 item 3): the CLI makes its own checks and records the update (requester,
source), then hands the run to a Prefect worker as a `product-update` deployment run instead of
carrying it out in this process - so the SRE's laptop needs neither the SSH key nor the file-server
password. With `--watch` it follows the run from our record (upkeep/progress.py) until it ends.

The hand-over is the dispatcher's: this process claims the run's lease and passes the owner to the flow
run (`lease_owner`), which takes the lease over from it; until a worker starts it, nobody else does."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from sqlalchemy.engine import Engine

from flows.plan import UpdatePlan
from inventory.db import session_scope
from inventory.runs import get_run
from upkeep.console import CliError, console, print_json

DEPLOYMENT = "product-update/product-update"
POOL = "upkeep-process"
POLL_SECONDS = 1.0


def workers_ready(within: float) -> None:
    """Refuse (one line, exit 1, nothing written) unless the deployment exists and a worker of its pool
    is online: a run handed to nobody would wait for ever. Both reads together are given up after
    `within` seconds (UPKEEP_PREFECT_ANSWER_SECONDS, `upkeep.updates.answer_seconds`), as in
    `prefect_answers`: an API that answered /health and then held these reads held the command for
    Prefect's 60 s per try and its retries (adv43)."""
    from prefect.settings import PREFECT_API_URL

    from flows.prefect_api import NoAnswer, answered_within, quick_client, scrubbed, shown

    where = shown(PREFECT_API_URL.value() or "") or "the temporary Prefect server"

    def read() -> tuple[str, list[Any]]:
        with quick_client(within) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            pool = deployment.work_pool_name or POOL
            return pool, client.read_workers_for_work_pool(pool)

    try:
        pool, workers = answered_within(within, read)
    except NoAnswer as exc:
        raise CliError(
            f"--on-worker: {exc} (PREFECT_API_URL; UPKEEP_PREFECT_ANSWER_SECONDS sets the wait); nothing was "
            "started or changed: try again once it answers"
        ) from None
    except Exception as exc:
        text = scrubbed(" ".join(str(exc).split()))[:200]
        raise CliError(
            f"--on-worker: no deployment {DEPLOYMENT} on {where} ({type(exc).__name__}: {text}); deploy "
            "first (`upkeep deploy`, docs/deploying.md) or run without --on-worker; "
            "nothing was started or changed"
        ) from None
    if not any(str(getattr(w.status, "value", w.status)).upper() == "ONLINE" for w in workers):
        raise CliError(
            f"--on-worker: no worker online in work pool {pool} on {where}; start one "
            f"(`UPKEEP_CHECKOUT=$PWD prefect worker start --pool {pool}`) or run without --on-worker; "
            "nothing was started or changed"
        )


def submit(plan: UpdatePlan, run_id: int, *, engine: Engine, owner: str, as_json: bool, watch: bool) -> int:
    """Hand `run_id` (claimed by `owner`) to the workers; with `watch`, follow it to its end."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from flows.links import flow_run_url
    from upkeep.bootstrap import quiet_prefect

    with session_scope(engine) as session:
        run = get_run(run_id, session=session)
        source, requested_by = run.source, run.requested_by
    parameters = {
        "cluster": plan.cluster,
        "to_version": plan.to_version,
        "run_id": run_id,
        "source": source,
        "requested_by": requested_by,
        "lease_owner": owner,
    }
    try:
        with quiet_prefect():
            flow_run = run_deployment(
                DEPLOYMENT, parameters=parameters, timeout=0, tags=[f"cluster:{plan.cluster}"]
            )
        assert isinstance(flow_run, FlowRun)  # called from sync code: not a coroutine
    except Exception as exc:
        from flows import lease

        lease.release(engine, run_id, owner)
        text = " ".join(str(exc).split())[:300]
        raise CliError(
            f"update-{run_id} could not be handed to the workers ({type(exc).__name__}: {text}); it waits: "
            f"`upkeep resume {run_id} [--on-worker]` or `upkeep cancel {run_id} --reason TEXT`"
        ) from None
    with session_scope(engine) as session:  # linked at once; the flow run writes it again when it starts
        run = get_run(run_id, session=session)
        run.flow_run_id = str(flow_run.id)
        session.add(run)
    url = flow_run_url(str(flow_run.id))
    if not watch:
        if as_json:
            print_json(
                {
                    "id": run_id,
                    "update": f"update-{run_id}",
                    "state": "submitted",
                    "flow_run_id": str(flow_run.id),
                    "flow_run_name": flow_run.name,
                    "flow_run_url": url or None,
                }
            )
        else:
            console.print(
                f"update-{run_id} handed to the workers as flow run {flow_run.name}"
                + (f" ({url})" if url else "")
                + f"; follow it with `upkeep show {run_id}`",
                markup=False,
                soft_wrap=True,
            )
        return run_id
    if not as_json:
        console.print(f"update-{run_id}: flow run {flow_run.name} on the workers", markup=False)
    return follow(run_id, flow_run.id, engine=engine, as_json=as_json)


def follow(run_id: int, flow_run_id: UUID, *, engine: Engine, as_json: bool) -> int:
    """Wait for the run to end (our record), showing its progress; the verdict as `upkeep update` gives
    it. A flow run that ends before taking the run (it crashed on the worker, was cancelled in the UI)
    ends the wait too."""
    from inventory.models import RunState
    from upkeep.progress import StepPoller, watch
    from upkeep.run_view import show_run

    ended_early: Any = None
    with watch(StepPoller(engine, lambda _: [run_id]), console=console, enabled=not as_json):
        while True:
            with session_scope(engine) as session:
                state = RunState(get_run(run_id, session=session).state)
            if not state.active:
                break
            flow_state = _flow_run_state(flow_run_id)
            if flow_state is not None and flow_state.is_final():
                with session_scope(engine) as session:  # it may have recorded its end just now
                    state = RunState(get_run(run_id, session=session).state)
                if state.active and state is not RunState.paused:
                    ended_early = flow_state
                break
            time.sleep(POLL_SECONDS)
    with session_scope(engine) as session:
        run = get_run(run_id, session=session)
        reason, state = run.reason, RunState(run.state)
    if ended_early is not None:
        raise CliError(
            f"flow run {flow_run_id} ended {ended_early.name} ({ended_early.message or 'no message'}) with "
            f"update-{run_id} {state}: `upkeep resume {run_id}` or `upkeep cancel {run_id} --reason TEXT`"
        )
    show_run(run_id, engine=engine, as_json=as_json)
    if state is RunState.failed:
        raise CliError(f"run {run_id} failed: {reason}")
    if state is RunState.cancelled and reason.startswith("approval refused"):
        raise CliError(f"run {run_id} was refused: {reason}")
    if state is not RunState.succeeded and not as_json:
        console.print(f"run {run_id} is {state}: {reason}", markup=False)
    return run_id


def _flow_run_state(flow_run_id: UUID) -> Any:
    """The flow run's state, or None when the API cannot say right now (the next poll asks again)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state
    except Exception:
        return None
