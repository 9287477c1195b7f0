"""`upkeep request`: a customer asks for a version, or support recommends one to resolve a case.

Validated before anything is written: the release and its upgrade path, no downgrade, one active update
per cluster (the database decides), and a support recommendation must name an open case. Then either
scheduled into the customer's window with the advance notice queued in the same transaction, or, with
`--now`, run at once inside an open window (or outside it with `--override-window --reason`, audited).
"""

from __future__ import annotations

import getpass
from datetime import timedelta

from sqlalchemy.engine import Engine

from flows.plan import plan_update
from inventory import repo
from inventory.db import session_scope
from inventory.models import AuditEvent, RunState
from inventory.runs import create_run
from inventory.windows import blackouts_for, cluster_windows
from scheduling.cutoff import open_window, room_for_a_node
from upkeep.console import CliError, console
from upkeep.updates import fleet_brake, run_product_update, show_run, warn_unchecked


def request_update(
    cluster: str,
    to_version: str,
    *,
    source: str,
    case: str | None,
    urgent: bool,
    now_run: bool,
    override_reason: str | None,
    engine: Engine,
    as_json: bool,
    on_worker: bool = False,
    watch: bool = False,
) -> int:
    from flows.runtime import current
    from inventory.cases import check_case_ref, get_case

    if source not in ("customer", "support"):
        raise CliError(f"--source {source!r}: expected customer or support")
    if source == "support" and not case:
        raise CliError("a support recommendation must name the case it resolves: --case CASE-123")
    if override_reason is not None and not override_reason.strip():
        raise CliError("--override-window needs --reason TEXT (it is audited)")
    if now_run:  # as `upkeep update`: refused before a run is written, asked once (not again below)
        from upkeep.updates import answer_seconds, cluster_limit_grants, prefect_answers

        # What was asked is looked at first, as `update` does: a typo in the cluster waited out the API
        # (up to UPKEEP_PREFECT_ANSWER_SECONDS) and was refused for it, unmentioned (adv43). Planned again
        # below, in the transaction that writes the run: the API reads wait, and what this plan read may
        # have changed meanwhile (adv48).
        with session_scope(engine) as session:
            plan_update(cluster, to_version, session=session)
        prefect_answers()  # no run is created that no flow could carry out
        if on_worker:  # a run handed to nobody would wait for ever
            from upkeep.on_worker import workers_ready

            workers_ready(answer_seconds())
        cluster_limit_grants()  # a braked fleet (scheduling is not refused: it waits for the slot)
    runtime = current()
    now = runtime.clock()
    with session_scope(engine) as session:
        # Path, downgrade, release: or refused, with what is written now (a plan made before the Prefect API
        # was waited for may be stale: another update of the cluster ended, the inventory changed; written
        # on it, the run was one the flow refused, the cluster claimed by it: adv48).
        plan = plan_update(cluster, to_version, session=session)
        if case:
            ref = check_case_ref(case)
            found = get_case(ref, session=session)
            if str(found.status) == "closed":
                raise CliError(f"case {ref} is closed: an update cannot resolve it")
        cluster_row = repo.get_cluster(plan.cluster, session=session)
        customer = repo.customer_of(cluster_row, session=session)
        requires_approval = customer.requires_approval
        if not now_run:
            from flows.schedule import schedule_update

            run = schedule_update(
                plan.cluster,
                to_version,
                now=now,
                urgent=urgent,
                case=case,
                source=source,
                requested_by=getpass.getuser(),
                session=session,
                plan=plan,  # planned above in this transaction: once (schedule_update plans if not given)
            )
            run.needs_approval = requires_approval
            session.add(run)
            session.flush()
            assert run.id is not None
            run_id = run.id
        else:
            # The cutoff rule (scheduling/cutoff.py): the run needs an open window with room for at
            # least one node; it records that window, and the cutoff stops it before a node that
            # would not finish in it (the rest carries over with a "partially done" notice).
            window = open_window(
                cluster_windows(cluster_row, customer, session=session),
                blackouts_for(customer, session=session),
                now,
            )
            fits = room_for_a_node(window, now, runtime.per_node_estimate)
            if not fits and override_reason is None:
                left = f" ({_span(window.end - now)} left)" if window is not None and window.end > now else ""
                raise CliError(
                    f"{plan.label}: no maintenance window is open now with room for one node "
                    f"(estimate {_span(runtime.per_node_estimate)}){left}; schedule it (drop --now), "
                    "or --override-window --reason TEXT"
                )
            run = create_run(
                cluster_row,
                to_version=to_version,
                source=source,
                requested_by=getpass.getuser(),
                session=session,
                state=RunState.planned,
            )
            run.case_ref, run.urgent, run.needs_approval = case, urgent, requires_approval
            if override_reason is not None:
                # Only an override ignores the window's cutoff; it is audited.
                run.override_reason = override_reason
                session.add(
                    AuditEvent(
                        actor=getpass.getuser(),
                        action="run.window_overridden",
                        subject=f"run/{run.id}",
                        detail={"reason": override_reason, "window_open": fits},
                    )
                )
            else:
                assert window is not None
                run.window_start, run.window_end = window.start, window.end
            session.add(run)
            session.flush()
            assert run.id is not None
            run_id = run.id
    if now_run:
        return run_product_update(
            plan, run_id, engine=engine, as_json=as_json, on_worker=on_worker, watch=watch, checked=True
        )
    try:
        _show_scheduled(run_id, engine=engine, as_json=as_json, brake=fleet_brake(runtime.cluster_limit))
    except KeyboardInterrupt:
        # The run and its notice are committed: a Ctrl-C now (a second one after the brake read's, or
        # one as the answer is written) ends the command, not the update; "aborted" alone was read as
        # nothing done, and the next request said it already had one (adv46).
        raise CliError(
            f"aborted: update-{run_id} is scheduled all the same and the customer's notice queued "
            f"(`upkeep show {run_id}`; `upkeep cancel {run_id}` drops it)",
            130,
        ) from None
    return run_id


def _show_scheduled(run_id: int, *, engine: Engine, as_json: bool, brake: dict[str, object] | None) -> None:
    from inventory.runs import get_run

    with session_scope(engine) as session:
        run = get_run(run_id, session=session)
        slot_start, slot_end = run.slot_start, run.slot_end
    warn_unchecked(brake)
    if as_json:
        show_run(run_id, engine=engine, as_json=True, extra={"cluster_limit": brake})
        return
    assert slot_start is not None and slot_end is not None
    held = f"; {brake['detail']}" if brake is not None and brake["held"] else ""
    console.print(
        f"update-{run_id} scheduled {slot_start:%Y-%m-%d %H:%M} UTC to {slot_end:%H:%M} UTC; "
        f"the customer's notice is queued (`upkeep notices send` or the dispatcher delivers it){held}",
        markup=False,
        soft_wrap=True,
    )


def _span(span: timedelta) -> str:
    """'3m10s', '10m', '45s'."""
    minutes, seconds = divmod(int(span.total_seconds()), 60)
    return (f"{minutes}m" if minutes else "") + (f"{seconds}s" if seconds or not minutes else "")
