"""CLI side of product updates: plan (dry run), run the flow, and show what happened."""

from __future__ import annotations

import getpass
from typing import Any
from uuid import UUID

from rich.markup import escape
from sqlalchemy.engine import Engine

from flows.plan import UpdatePlan, plan_update
from inventory.db import session_scope
from inventory.runs import REFUSED, get_run, refusal
from upkeep.console import CliError, console, err_console, print_json
from upkeep.run_view import no_update, show_run
from upkeep.settings import printable


def _plan(cluster: str, to_version: str, engine: Engine) -> UpdatePlan:
    with session_scope(engine) as session:
        return plan_update(cluster, to_version, session=session)


def print_plan(cluster: str, to_version: str, *, engine: Engine, as_json: bool) -> None:
    plan = _plan(cluster, to_version, engine)
    if as_json:
        from inventory.public import PlanPublic

        print_json(PlanPublic.model_validate(plan).model_dump(mode="json"))
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


def check_update(cluster: str, to_version: str, *, engine: Engine, as_json: bool) -> None:
    """`update --check`: the real pre-flight (flows/check.py), one line per check; exit 1 if any failed.
    Nothing is written and nothing is started: no run, no step, no audit, no notice."""
    import typer

    from flows.check import check_update as run_checks
    from flows.runtime import current

    plan = _plan(cluster, to_version, engine)  # bad cluster or version: refused as `update` refuses it
    result = run_checks(plan, current())
    if as_json:
        print_json(result.model_dump(mode="json"))
    else:
        console.print(f"[bold]check[/]: update {plan.label} (nothing is touched)")
        for item in result.checks:
            mark = "[green]ok  [/]" if item.ok else "[red]FAIL[/]"
            console.print(f"  {mark} {escape(item.what)}: {escape(item.detail)}", soft_wrap=True)
        failed = sum(not item.ok for item in result.checks)
        if failed:
            console.print(f"[red]{failed} check(s) failed[/]: `upkeep update` would stop at pre-flight")
        else:
            run_it = f"upkeep update {plan.cluster} --to {plan.to_version}"
            console.print(f"[green]every check passed[/]; `{escape(run_it)}` runs it")
    if not result.ok:
        raise typer.Exit(1)


def run_update(
    cluster: str,
    to_version: str,
    *,
    engine: Engine,
    as_json: bool,
    case: str | None = None,
    require_approval: bool = False,
    on_worker: bool = False,
    watch: bool = False,
) -> int:
    """Claim the cluster with a new run, then run the product-update flow in this process (or hand it
    to a worker: `on_worker`).

    Claiming first means a concurrent second update is refused at once, by the database, before
    Prefect starts. Returns the run id; raises CliError when the run does not succeed."""
    from inventory import repo
    from inventory.cases import check_case_ref
    from inventory.models import RunState
    from inventory.runs import create_run

    if case is not None:
        check_case_ref(case)  # as `request` and `schedule` do: the run keeps it, diagnostics use it
    _plan(cluster, to_version, engine)  # refuses bad requests before the API is waited for
    prefect_answers()  # no run is created that no flow could carry out
    cluster_limit_grants()
    if on_worker:
        from upkeep.on_worker import workers_ready

        workers_ready(answer_seconds())
    with session_scope(engine) as session:
        # Planned again in the transaction that writes the run: the reads above wait on the Prefect API
        # (UPKEEP_PREFECT_ANSWER_SECONDS each), and another update of the cluster may have ended or the
        # inventory changed meanwhile; written on the first plan, the run was one the flow then refused,
        # the cluster claimed by it (adv48).
        plan = plan_update(cluster, to_version, session=session)
        run = create_run(
            repo.get_cluster(plan.cluster, session=session),
            to_version=to_version,
            source="cli",
            requested_by=getpass.getuser(),
            session=session,
            state=RunState.planned,
        )
        run.case_ref, run.needs_approval = case, require_approval
        session.add(run)
        session.flush()
        assert run.id is not None
        run_id = run.id
    return run_product_update(
        plan, run_id, engine=engine, as_json=as_json, on_worker=on_worker, watch=watch, checked=True
    )


def _take(run_id: int, engine: Engine, *, handed_over: bool = False) -> str:
    """This process's claim on the run (flows/lease.py: one compare-and-set). Lost: one line naming
    the holder, exit 2; the run already ended: one line, exit 1."""
    from datetime import timedelta

    from flows import lease
    from upkeep.settings import load_settings

    settings = load_settings()
    # Handed to a worker: held until one starts the flow run, as the dispatcher's hand-over is.
    lease_for = timedelta(seconds=settings.start_lease_seconds if handed_over else settings.run_lease_seconds)
    try:
        with session_scope(engine) as session:
            return lease.claim(session, run_id, now=_lease_clock(), lease=lease_for, actor=getpass.getuser())
    except lease.LeaseHeld as exc:
        raise CliError(str(exc), code=2) from None
    except lease.NotResumable as exc:
        raise CliError(str(exc)) from None


def _lease_clock() -> Any:
    """The clock `upkeep resume`/`update` claim a run and read its holder's lease by: the runtime's, which
    the flow's acquire and heartbeat and the dispatcher's claim and take-over write and read leases by
    (one clock in production; a fixed one in tests and the lab). By the wall clock, a runtime clock fixed
    behind it made a live flow's lease read as run out and the run claimed from under it (adv45). The wall
    clock where no runtime is configured."""
    from flows.runtime import RuntimeNotConfigured, current
    from inventory.types import utcnow

    try:
        return current().clock()
    except RuntimeNotConfigured:
        return utcnow()


def answer_seconds() -> float:
    """UPKEEP_PREFECT_ANSWER_SECONDS: how long a pre-check waits for the Prefect API's whole answer."""
    from flows.runtime import RuntimeNotConfigured, current
    from upkeep.settings import load_settings

    try:
        return current().prefect_answer_seconds
    except RuntimeNotConfigured:
        return load_settings().prefect_answer_seconds


def prefect_answers() -> None:
    """Refuse (one line, exit 1) unless the Prefect API answers, within UPKEEP_PREFECT_ANSWER_SECONDS
    (flows/prefect_api.py: Prefect's client alone waited minutes on an API that never answers); the
    temporary server this starts when no PREFECT_API_URL is set is the one the flow then uses."""
    from prefect.settings import PREFECT_API_URL

    from flows.prefect_api import NoAnswer, answered_within, quick_client, scrubbed, shown
    from upkeep.bootstrap import silence_prefect_console, temporary_server_dies_with_us

    where = shown(PREFECT_API_URL.value() or "") or "the temporary Prefect server"
    seconds = answer_seconds()
    silence_prefect_console()  # a command that imported its flow first has Prefect's logging on

    def ask() -> Exception | None:
        with quick_client(seconds) as client:
            problem = client.api_healthcheck()
            if problem is None:  # /health answers 200 on any web server: is it Prefect's API?
                client.raise_for_api_version_mismatch()  # as the flow's client does first
        return problem

    try:
        temporary_server_dies_with_us()
        problem = answered_within(seconds, ask)
    except NoAnswer as exc:
        raise CliError(
            f"{exc} (PREFECT_API_URL; UPKEEP_PREFECT_ANSWER_SECONDS sets the wait); nothing was started or "
            "changed: try again once it answers"
        ) from None
    except Exception as exc:  # the temporary server did not start in time, a bad URL, not Prefect, ...
        problem = exc
    if problem is not None:
        text = scrubbed(" ".join(str(problem).split()))[:300]
        raise CliError(
            f"the Prefect API ({where}) does not answer ({type(problem).__name__}: {text}); nothing was "
            "started or changed: try again once it answers (PREFECT_API_URL; for the temporary server, "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
        )


def cluster_limit_grants() -> None:
    """Refuse (one line, exit 1) while UPKEEP_CLUSTER_LIMIT names a Prefect limit that can grant no slot
    (none of that name, or its limit 0: the fleet's brake, flows/dispatch.py `cluster_limit_blocks`).
    Carried out, the run would fail on it before its first node, or, resumed after a node was upgraded,
    fail with the customer told 'failed' and a case opened, over the vendor's own setting (adv37).
    Nothing is started or changed; the run stays as it was. One API read, only with the setting, given
    up after UPKEEP_PREFECT_ANSWER_SECONDS (refused then too: what it would start waits on that API), and
    refused when the API answers it with an error or with something that is not a limit (an API that
    answers /health and 500 on the rest): read as 'away', the update went on and failed on the limit."""
    from flows.product_update import limit_unusable
    from flows.runtime import current

    name = current().cluster_limit
    # `away` too: the API answered /health just before (`prefect_answers`), and a limit's read it drops
    # (the connection reset on that path, bytes that are no HTTP) let the update through into a flow
    # that asks the same limit for its slot (adv48); a silent or erring API was refused already.
    if name and (why := limit_unusable(name, away=True, within=answer_seconds())):
        raise CliError(f"{why}; nothing was started or changed")


def run_product_update(
    plan: UpdatePlan,
    run_id: int,
    *,
    engine: Engine,
    as_json: bool,
    owner: str | None = None,
    on_worker: bool = False,
    watch: bool = False,
    checked: bool = False,
) -> int:
    """Run the product-update flow on `run_id`, claimed by this process as `owner` (claimed here
    when None); `on_worker`: hand it to a worker as a deployment run (followed with `watch`).
    `checked`: the caller asked `prefect_answers` and `cluster_limit_grants` before writing the run
    (`update`, `request --now`): not asked again (an API read each, for the same answer)."""
    from flows import lease

    if owner is None and not checked:
        try:
            prefect_answers()
            cluster_limit_grants()
        except CliError as exc:
            waits = f"run {run_id} waits: `upkeep resume {run_id}` or `upkeep cancel {run_id}`"
            raise CliError(f"{exc}; {waits}") from None
    if owner is None:
        owner = _take(run_id, engine, handed_over=on_worker)
    if on_worker:
        from upkeep.on_worker import submit

        return submit(plan, run_id, engine=engine, owner=owner, as_json=as_json, watch=watch)
    try:
        return _carry_out(plan, run_id, engine=engine, as_json=as_json, owner=owner)
    finally:
        lease.release(engine, run_id, owner)  # only if the flow never took the run over from the claim


def _carry_out(plan: UpdatePlan, run_id: int, *, engine: Engine, as_json: bool, owner: str) -> int:
    import prefect

    from flows import lease
    from flows.product_update import product_update
    from upkeep.bootstrap import quiet_prefect
    from upkeep.progress import StepPoller, watch

    with session_scope(engine) as session:
        case = get_run(run_id, session=session).case_ref
    tags = [f"customer:{plan.customer}", f"cluster:{plan.cluster}", "source:cli"]
    tags += [f"case:{case}"] if case else []
    progress = watch(StepPoller(engine, lambda _: [run_id]), console=console, enabled=not as_json)
    with quiet_prefect(), prefect.tags(*tags), progress:
        try:
            state = product_update(
                cluster=plan.cluster,
                to_version=plan.to_version,
                run_id=run_id,
                lease_owner=owner,
                return_state=True,
            )
        except Exception as exc:
            if not api_unreachable(exc):
                raise
            return _after_api_loss(run_id, exc, engine=engine, as_json=as_json)
    with session_scope(engine) as session:
        run = get_run(run_id, session=session)
        reason, run_state = run.reason, run.state
        held_by, since, until = run.lease_owner, run.lease_since, run.lease_until
    if run_state == "running" and held_by and not lease.same_process(held_by, owner):
        # Taken from this process while it stood still (frozen, cut off): the other one carries it on.
        # (The flow's own lease, not the claim `owner`, is what it held: same process, other claim.)
        raise CliError(lease.held_message(run_id, held_by, since, until), code=2)
    if _outcome(state) == "taken over":  # ... and that other process has finished it meanwhile
        raise CliError(
            f"run {run_id} was taken over by another process, which left it {run_state}; "
            f"`upkeep show {run_id}`",
            code=2,
        )
    show_run(run_id, engine=engine, as_json=as_json)
    if state.is_failed():
        raise CliError(f"run {run_id} failed: {reason or state.message}")
    if run_state == "cancelled" and reason.startswith("approval refused"):
        raise CliError(f"run {run_id} was refused: {reason}")  # exit 1: nothing was done
    if run_state != "succeeded":
        console.print(f"run {run_id} is {run_state}: {reason}", markup=False)
    return run_id


def _outcome(state: Any) -> str:
    """The flow's own word on how it ended ("succeeded", "taken over", ...), or "" if it has none."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # a result that cannot be read back: the record above decides
        return ""
    return str(result.get("state", "")) if isinstance(result, dict) else ""


def api_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is the Prefect API not answering: no connection, a timeout,
    or a server error after the client's own retries."""
    import httpx

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, httpx.TransportError):
            return True
        if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code >= 500:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _after_api_loss(run_id: int, exc: Exception, *, engine: Engine, as_json: bool) -> int:
    """Prefect could not start the flow run, or could not record its end. Our database says how far
    the run got, so the verdict comes from there; the Prefect UI may just not know."""
    from prefect.settings import PREFECT_API_URL

    from flows.prefect_api import scrubbed, shown
    from inventory.models import RunState

    with session_scope(engine) as session:
        run = get_run(run_id, session=session)
        reason, run_state = run.reason, RunState(run.state)
    # Shown bare (adv46): the URL's userinfo or query may be a proxy's password or a token, and httpx's
    # message names the request's full URL.
    where, cause = shown(PREFECT_API_URL.value() or ""), scrubbed(" ".join(str(exc).split()))[:300]
    trouble = f"the Prefect API at {where} did not answer ({type(exc).__name__}: {cause})"
    if run_state in (RunState.planned, RunState.running):
        # The flow never got to the run (or lost it to another process): nothing was touched after.
        raise CliError(
            f"run {run_id} is {run_state} and was not carried on: {trouble}; "
            f"`upkeep resume {run_id}` continues it once the API answers, `upkeep cancel {run_id}` drops it"
        )
    show_run(run_id, engine=engine, as_json=as_json)
    err_console.print(
        f"note: {trouble} as the run ended; the record above is complete, the Prefect UI may show "
        "its flow run unfinished",
        markup=False,
    )
    if run_state is RunState.failed:
        raise CliError(f"run {run_id} failed: {reason}")
    if run_state is not RunState.succeeded:
        console.print(f"run {run_id} is {run_state}: {reason}", markup=False)
    return run_id


def scheduled(run_id: int, *, engine: Engine) -> bool:
    """Whether the update is planned with an announced slot (cancelled through flows.schedule, which
    withdraws the customer's calendar entry), rather than running, paused or carried over."""
    from inventory.models import RunState

    with session_scope(engine) as session:
        try:
            run = get_run(run_id, session=session)
        except LookupError:
            raise CliError(no_update(run_id)) from None
        return RunState(run.state) is RunState.planned and run.slot_start is not None and not run.started_at


def resume_run(
    run_id: int,
    *,
    engine: Engine,
    as_json: bool,
    override_reason: str | None = None,
    actor: str = "",
    on_worker: bool = False,
    watch: bool = False,
) -> int:
    """Continue a crashed, paused or carried-over run where it stopped; nodes already done are not
    touched. A run that has a window resumes only inside one with room for a node (its slot is the
    dispatcher's to start), unless the window is overridden with a reason (audited). Outside one, a run
    stopped for now (stalled, or a pause told 'stopped') is planned for its next window; a pause whose
    window is over and not yet told (the dispatcher's tick has not run since) is told 'stopped' first, as
    the tick would, then planned alike (h-ending).

    The run is claimed first (one compare-and-set on its lease): of several resumes at once, or a
    resume racing the dispatcher's take-over, exactly one carries it out; the others exit 2."""
    from flows import lease, records
    from flows.run_window import has_window, window_at
    from flows.runtime import current
    from inventory.models import AuditEvent, Cluster, RunState
    from scheduling.cutoff import room_for_a_node

    if override_reason is not None and not override_reason.strip():
        raise CliError("--override-window needs --reason TEXT (it is audited)")
    runtime = current()
    now = runtime.clock()
    # What needs no Prefect first, before the API is asked, so an API away does not hide the answer the
    # SRE asked for: a live holder (refused, named, exit 2, as the claim would), and, unless overridden,
    # the window: outside one the run is refused (its next slot named) or, stalled, planned for its
    # next window.
    replanned = ""  # a stalled run planned for its next window: said once that is committed
    untold = False  # a pause past its window the dispatcher's tick has not told yet
    with session_scope(engine) as session:
        try:
            run = get_run(run_id, session=session)
        except LookupError:
            raise CliError(no_update(run_id)) from None
        if RunState(run.state).active and (held := lease.held_live(run, _lease_clock())):
            raise CliError(held, code=2)
        if (
            override_reason is None
            and RunState(run.state).active
            and has_window(run)
            and not room_for_a_node(window_at(run, now, session=session), now, runtime.per_node_estimate)
        ):
            if records.stopped_for_now(run):  # a stall, or a pause past its window: told 'stopped'
                replanned = _replan_stalled(run_id, now, session, actor or getpass.getuser())
            elif _untold_pause_past_window(run, now, session):
                untold = True
            else:
                where = _next_slot(run, now, session)
                raise CliError(f"run {run_id} resumes only inside a maintenance window: {where}")
    if untold:
        # What the dispatcher's tick would have done first, through its own path and once-only mark (under
        # the run's row lock: a tick or another resume at once tells it once), in its own transaction - it
        # stands whatever the replan finds - then the replan, as after the tick (h-ending).
        from flows.outcomes import tell_paused_stopped

        told = tell_paused_stopped(runtime, run_id, now)
        try:
            with session_scope(engine) as session:
                replanned = _replan_stalled(run_id, now, session, actor or getpass.getuser(), told_first=True)
        except CliError as exc:
            if not told:
                raise
            # The 'stopped' stands (committed): a refusal saying only "no later window" read as nothing
            # done, the customer just mailed (adv59).
            raise CliError(
                f"{exc}; the customer was told it stopped for now ('stopped') first, as the dispatcher's "
                "tick would have",
                code=exc.code,
            ) from None
    if replanned:
        _replanned(run_id, replanned, as_json, runtime.cluster_limit)
        return 0
    if _active(run_id, engine):
        # Before anything is written (an override and its audit, the claim): an API that does not answer
        # refuses the resume with the run exactly as it was. Once: not again after the claim.
        prefect_answers()
        if on_worker:  # as well: its refusal wrote the override and its audit first (adv43)
            from upkeep.on_worker import workers_ready

            workers_ready(answer_seconds())
    if _needs_a_slot(run_id, engine):
        # Before anything is written: the claim clears a pending pause/cancel and takes the lease, and
        # giving it back left an orphan with no lease at all (never taken over again; adv39).
        cluster_limit_grants()
    with session_scope(engine) as session:
        try:
            run = get_run(run_id, session=session)
        except LookupError:
            raise CliError(no_update(run_id)) from None
        if RunState(run.state).active and override_reason is not None:
            run.override_reason = override_reason
            session.add(run)
            detail = {"reason": override_reason, "on": "resume"}
            actor = actor or getpass.getuser()
            overridden = AuditEvent(
                actor=actor, action="run.window_overridden", subject=f"run/{run_id}", detail=detail
            )
            session.add(overridden)
        cluster = session.get(Cluster, run.cluster_id)
        assert cluster is not None
        name, to_version = cluster.name, run.to_version
    owner = _take(run_id, engine, handed_over=on_worker)
    try:
        plan = _plan(name, to_version, engine)
    except BaseException:
        lease.release(engine, run_id, owner)
        raise
    return run_product_update(
        plan, run_id, engine=engine, as_json=as_json, owner=owner, on_worker=on_worker, watch=watch
    )


def _active(run_id: int, engine: Engine) -> bool:
    """Whether `run_id` is a run not yet ended (an unknown or ended one: `resume` says so, API or not)."""
    from inventory.models import RunState, UpgradeRun

    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        return run is not None and RunState(run.state).active


STALL_REPLANNED = (
    "the update could not go ahead in your last maintenance windows; the cause is fixed and it now "
    "starts in your next window"
)
# A pause told 'stopped' ("our engineers stopped it during your maintenance window to check something"):
# the stall's words said it could not go ahead in windows it never failed in (adv59).
PAUSE_REPLANNED = "our engineers have finished their check and the update goes on in your next window"


def _untold_pause_past_window(run: Any, now: Any, session: Any) -> bool:
    """Whether `run` is a pause the dispatcher's tick would tell 'stopped' now and has not yet (the tick
    between two runs, or the dispatcher down): paused by an SRE, its window over, its customer told of it
    (flows/outcomes.py `tell_paused_past_window`'s own conditions, read again under the row lock there)."""
    from flows.outcomes import announced_window_over
    from flows.records import stopped_for_now
    from flows.run_notices import customer_knows
    from inventory.models import RunState

    return (
        RunState(run.state) is RunState.paused
        and not stopped_for_now(run)
        and announced_window_over(run, now, session=session)
        and customer_knows(run, session)
    )


def _replan_stalled(run_id: int, now: Any, session: Any, actor: str, *, told_first: bool = False) -> str:
    """`upkeep resume` of a stalled run outside a window: planned for its next window with room, the
    customer told 'rescheduled' with the time, and left to the dispatcher there, as any planned run.
    The stall's alert asks for a resume once the cause is fixed, but the customer's window is at night:
    refused outside it, a paused run that nothing starts needed the SRE up at that hour, a window
    overridden, or a cancel and a new request (the approval and the copies on the nodes lost). Under
    the row's lock (a cancel deciding at once waits); a live lease (the stalling process not yet gone)
    refuses. Returns what was done. An SRE's pause whose window ended with it paused told the customer
    'stopped' as a stall does (flows/outcomes.py `tell_paused_past_window`): its resume is the same."""
    from flows import lease, records
    from flows.run_notices import VendorTerms, move_notice
    from flows.runtime import current
    from flows.schedule import ScheduleRefused, reslot_update
    from inventory.models import AuditEvent, RequestedAction, RunState

    run = get_run(run_id, session=session, lock=True)
    if not records.stopped_for_now(run):
        raise CliError(f"run {run_id} is {run.state} now (changed just now); see `upkeep show {run_id}`")
    # The claim's own rule and clock (`_lease_clock`, which leases are written by), as the read-only
    # check before: another resume may have claimed the run between that check and this lock.
    if held := lease.held_live(run, _lease_clock()):
        raise CliError(held, code=2)
    before, was = run.reason, "stalled" if records.stalled(run) else "paused past its window"
    run.state, run.requested_action = RunState.planned, RequestedAction.none
    run.lease_owner = run.lease_until = run.lease_since = None
    session.add(run)
    session.flush()
    # What the re-slot sends, asked before it queues it (after, its own pending notice answers 'knows'):
    # 'rescheduled', 'scheduled' anew when every notice bounced, or none (never announced; adv57).
    kind = move_notice(run, session)
    try:
        moved = reslot_update(
            run_id,
            now=now,
            reason=STALL_REPLANNED if was == "stalled" else PAUSE_REPLANNED,
            session=session,
            vendor=VendorTerms.from_runtime(current()),
        )
    except ScheduleRefused as exc:  # no later window: nothing written (the transaction rolls back)
        raise CliError(
            f"{exc}; or `upkeep resume {run_id} --override-window --reason TEXT` (audited)"
        ) from None
    assert moved.slot_start is not None
    when = f"{moved.slot_start:%Y-%m-%d %H:%M} UTC"
    after = "a stall" if was == "stalled" else "a pause past its window"
    moved.reason = f"resumed by {actor} after {after}: planned for {when} (was: {before})"[:2000]
    session.add(moved)
    detail = {"slot_start": moved.slot_start.isoformat(), "stalled": before[:500]}
    session.add(AuditEvent(actor=actor, action="run.replanned", subject=f"run/{run_id}", detail=detail))
    first = (
        "the customer was told it stopped for now ('stopped') first, as the dispatcher's tick would have; "
        if told_first
        else ""
    )
    told = first + (
        f"the customer is told ('{kind.value}'"
        + (", the update announced anew: every notice of it was refused" if kind.value == "scheduled" else "")
        + ")"
        if kind is not None
        else "the customer was not told (the update was never announced to them; its start tells them)"
    )
    return (
        f"run {run_id} was {was} and no window is open now: planned for {when}, the next window with room"
        f"{STARTS_THEN}; {told}"
    )


STARTS_THEN = " (the dispatcher starts it then)"


def _replanned(run_id: int, said: str, as_json: bool, limit: str) -> None:
    """The replan's one line (or JSON), with the fleet's brake as `upkeep request` says it: planned into a
    braked fleet, the dispatcher holds the start rather than starting it (read after the commit, within
    UPKEEP_PREFECT_ANSWER_SECONDS; the replan itself needs no Prefect)."""
    brake = fleet_brake(limit)
    warn_unchecked(brake)
    if brake is not None and brake["held"]:
        said = said.replace(STARTS_THEN, f"; {brake['detail']}")
    if not as_json:
        console.print(said, markup=False, soft_wrap=True)
        return
    answer = {"id": run_id, "update": f"update-{run_id}", "state": "planned", "message": said}
    print_json({**answer, "cluster_limit": brake})


def _needs_a_slot(run_id: int, engine: Engine) -> bool:
    """Whether resuming `run_id` would ask the cluster limit for a slot: an active run with a node not
    yet verified. One whose every node was verified (its process died before recording the end) needs
    none: the flow records it succeeded (flows/product_update.py `_end_for_the_limit`), and while the
    fleet is braked the dispatcher takes no orphan over, so a resume is the only way it ends. An unknown
    or ended run: False (the usual lines below say so)."""
    from flows.records import every_node_done
    from inventory import repo
    from inventory.models import Cluster, RunState, UpgradeRun

    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        if run is None or not RunState(run.state).active:
            return False
        cluster = session.get(Cluster, run.cluster_id)
        assert cluster is not None
        nodes = [node.id for node in repo.cluster_nodes(cluster, session=session)]
    return not nodes or not every_node_done(engine, run_id, [node for node in nodes if node is not None])


def _next_slot(run: Any, now: Any, session: Any) -> str:
    """'the next slot is ... (the dispatcher starts it then)', or why there is none; with the override."""
    from flows.runtime import current
    from flows.schedule import next_window
    from scheduling.errors import SchedulingError

    how = "or `--override-window --reason TEXT` (audited)"
    if run.state == "planned" and run.slot_start is not None and run.slot_start > now:
        return f"its slot starts {run.slot_start:%Y-%m-%d %H:%M} UTC (the dispatcher starts it then); {how}"
    try:
        slot = next_window(
            run, now=now, not_before=now, estimate=current().per_node_estimate, urgent=True, session=session
        )
    except SchedulingError as exc:
        return f"no later window has room for a node ({exc}); {how}"
    return f"the next window with room opens {slot.start:%Y-%m-%d %H:%M} UTC; {how}"


def request_stop(run_id: int, action: str, *, engine: Engine, actor: str, reason: str = "") -> str:
    """Ask a run to pause or cancel. A running flow honours it between nodes; a run with no
    flow behind it (paused, planned, or crashed) is cancelled here and now."""
    from inventory.models import AuditEvent, RequestedAction, RunState

    with session_scope(engine) as session:
        try:
            # Locked: a resume taking the run at this moment is seen (running: the cancel is requested
            # and honoured before the next node), never overwritten with `running` after we cancel.
            run = get_run(run_id, session=session, lock=True)
        except LookupError:
            raise CliError(no_update(run_id)) from None
        reason = reason.strip()
        if action == "cancel" and not reason:
            raise CliError(f"cancel {run_id} needs --reason TEXT (it is recorded and told to the customer)")
        state = RunState(run.state)
        if not state.active:
            raise CliError(f"run {run_id} is {state}: it cannot be {_PAST[action]}")
        _hold_state(run, state, action, session)
        session.refresh(run)  # read under the row's lock: an approval gate's answer just given counts
        if state is RunState.running and run.reason.startswith(REFUSED) and not run.approved_by:
            raise CliError(
                f"run {run_id} was refused at its approval gate just now: it ends cancelled, no node "
                f"touched; not {_PAST[action]} (see `upkeep show {run_id}`)"
            )
        if state is RunState.running and action == "pause" and run.requested_action == RequestedAction.cancel:
            # A pause would overwrite the cancel: the run ended paused, the customer never told.
            raise CliError(
                f"run {run_id}: a cancel is already requested; it ends cancelled: not paused "
                f"(see `upkeep show {run_id}`)"
            )
        detail = {"reason": reason} if reason else {}
        session.add(
            AuditEvent(actor=actor, action=f"run.{action}_requested", subject=f"run/{run_id}", detail=detail)
        )
        if action == "cancel" and state is not RunState.running:
            from flows.outcomes import cancelled_while_stopped
            from flows.runtime import current

            cancelled_while_stopped(current(), run, reason=f"cancelled by {actor}: {reason}", session=session)
            return f"run {run_id} cancelled; the customer is told (if the update was announced)"
        if action == "pause" and state is RunState.paused:
            return f"run {run_id} is already paused"
        run.requested_action = RequestedAction(action)
        if action == "cancel":
            run.reason = f"cancelled by {actor}: {reason}"  # the flow's cancel ending tells it
        session.add(run)
        then = _told_at_window_end(run, session) if action == "pause" and state is RunState.running else ""
        if run.needs_approval and state is RunState.running:
            return _stop_at_the_gate(run, action) + then
    return f"run {run_id}: {action} requested; the node in progress finishes first{then}"


def _told_at_window_end(run: Any, session: Any) -> str:
    """What a pause's answer says of the customer: a customer told of the update hears it stopped for now
    ('stopped') if it is still paused when its window ends (flows/outcomes.py `tell_paused_past_window`),
    the end said in their zone and in UTC; "" when never announced; with no window recorded at all (an
    overridden `request --now`, `upkeep update`), that nothing will be told automatically. A
    window already over (the node in progress overran it) is said as over, not as a time still to come."""
    from zoneinfo import ZoneInfo

    from flows.outcomes import announced_end_of, last_word
    from flows.run_notices import customer_knows
    from flows.run_window import has_window, window_now
    from flows.runtime import current
    from inventory import repo
    from inventory.models import Cluster

    now = current().clock()
    end = announced_end_of(run, session)  # an overridden run's too: the window it was told 'started' for
    if not customer_knows(run, session):
        return ""
    if end is None:  # no window recorded at all: nothing for the tick to go by (h-ending)
        how = "overridden" if run.override_reason else "started by `upkeep update`"
        return (
            f"; it has no maintenance window ({how}): the customer, told it started, is not told "
            "automatically if it stays paused; tell them yourself, or resume or cancel it"
        )
    if end > now and has_window(run):
        # The window as it is now, as the cutoff and the tick read it (an import may have shortened it).
        open_now = window_now(run, now, session=session)
        end = min(end, open_now.end) if open_now is not None else now
    cluster = session.get(Cluster, run.cluster_id)
    zone = repo.customer_of(cluster, session=session).timezone if cluster is not None else "UTC"
    local = end.astimezone(ZoneInfo(zone))
    at = f"{local:%Y-%m-%d %H:%M} {zone} ({end.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M} UTC)"
    if last_word(run, session) == "stopped":  # resumed after a 'stopped', paused before it started again
        return "; the customer was already told it stopped for now ('stopped'): not told again"
    if end <= now:  # the node in progress overran the window (or it was removed): no time left to resume in
        return (
            f"; its window ended at {at}: the customer is told it stopped for now ('stopped') at the "
            "dispatcher's next tick once it has paused"
        )
    return (
        f"; if it is not resumed before its window ends at {at}, the customer is told it stopped for now "
        "('stopped')"
    )


def _stop_at_the_gate(run: Any, action: str) -> str:
    """What a pause/cancel of a run with an approval gate does, decided under the run's row lock, which
    `upkeep approve` answers under too: of an answer and a stop at the same moment, exactly one takes
    the gate. Not answered yet: the flow's gate wakes for the stop within seconds (flows/approval.py)
    and ends paused or cancelled, no node touched; that is its process's watcher thread, so when the
    lease rules (flows/lease.py) say that process is gone (its lease ran out, or it ran on this host and
    its pid is gone: a kill -9) nothing wakes the gate: the dispatcher's take-over once the lease has run
    out honours the stop. Approved first: the stop is an ordinary one, told so."""
    if run.approved_by:
        return (
            f"run {run.id}: {action} requested; it was approved (by {printable(run.approved_by)}) and is "
            "under way: the node in progress finishes first"
        )
    then = "" if action == "cancel" else "; `upkeep resume` asks for approval again"
    asked = f"run {run.id}: {action} requested before approval"
    if dead := _gate_not_answering(run, "ends it"):
        return f"{asked}; {dead}, no node touched{then}"
    if unseen := _holder_unseen(run, "stops", "ends it"):
        return f"{asked}; {unseen}, no node touched{then}"
    return f"{asked}; it stops within seconds, no node touched{then}"


def _holder_unseen(run: Any, acts: str, does: str) -> str:
    """When the process at the run's gate runs where whether it lives cannot be told from here before
    its lease runs out - on another machine, or where its pid cannot be seen (another container with this
    host name, this machine before a reboot: flows/lease.py `unseen_here`): that it `acts` within
    seconds if it lives, and else the take-over after its lease `does` it, with the time; else ""."""
    from flows import lease

    if run.lease_until is None or not run.lease_owner:
        return ""
    if lease.held_elsewhere(run.lease_owner):
        gone = "if that machine is gone"
    elif lease.unseen_here(run.lease_owner):
        gone = f"{lease.UNSEEN}: if it is gone"
    else:
        return ""
    return (
        f"it {acts} within seconds if its process ({lease.holder_label(run.lease_owner)}) lives; {gone}, "
        f"the dispatcher's first take-over after its lease runs out at {run.lease_until:%Y-%m-%d %H:%M:%S} "
        f"UTC {does}"
    )


def _gate_not_answering(run: Any, does: str) -> str:
    """When the lease rules (flows/lease.py) say the process of a run at its gate is gone (its lease ran
    out, or it ran on this host and its pid is gone: a kill -9): who `does` what the operator asked, and
    when; else "". Nothing acts before a take-over, and a take-over needs a dispatcher: where none runs
    (no deployment, no cron entry), `upkeep dispatch` is one, here."""
    from flows import lease
    from flows.runtime import current

    ran_out = lease.expired(run.lease_until, current().clock())
    if not run.lease_owner or not (ran_out or lease.holder_gone(run.lease_owner)):
        return ""
    until = f"{run.lease_until:%Y-%m-%d %H:%M:%S} UTC"
    when = f"its lease ran out at {until}" if ran_out else f"once its lease runs out at {until}"
    by_hand = "now" if ran_out else "after that"
    return (
        f"its process ({lease.holder_label(run.lease_owner)}) is not answering: the dispatcher's next "
        f"take-over {does} ({when}; where no dispatcher runs, `upkeep dispatch` {by_hand} does it here)"
    )


_PAST = {"approve": "approved", "refuse": "refused", "cancel": "cancelled", "pause": "paused"}


def _hold_state(run: Any, state: Any, action: str, session: Any) -> None:
    """Lock the run's row for this transaction, provided it is still in the state just read.

    The read and the write after it can straddle another process's commit (PostgreSQL): the
    dispatcher or a resume starting a carried-over or paused run (a cancel would then mark a running
    update cancelled, and tell the customer so, while its nodes are being upgraded), or the flow
    recording its end (a cancel would write 'cancelled by ...' as a succeeded run's reason). This
    conditional UPDATE takes the row lock, so a claim after it waits for our commit, and refuses
    when the run changed since the read."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.models import UpgradeRun

    held = session.execute(
        update(UpgradeRun)
        .where(col(UpgradeRun.id) == run.id, col(UpgradeRun.state) == state)
        .values(state=state)
        .execution_options(synchronize_session=False)
    )
    if held.rowcount != 1:
        session.refresh(run)
        raise CliError(
            f"run {run.id} is {run.state} now (another process started or ended it just now): "
            f"not {_PAST.get(action, action + 'ed')}; see `upkeep show {run.id}`"
        )


def _db_cause(exc: Any) -> str:
    """The database's own words for a failed statement, its first line."""
    text = str(exc.orig).strip()
    return text.splitlines()[0] if text else type(exc.orig).__name__


def approve_run(run_id: int, *, engine: Engine, approved: bool, reason: str, actor: str) -> str:
    from prefect.exceptions import FlowPauseTimeout, NotPausedError
    from sqlalchemy.exc import DBAPIError

    from flows import lease
    from flows.approval import GATE_PATIENCE, GateNotAsking, answer_gate, decision
    from inventory.models import RunState

    with session_scope(engine) as session:
        try:
            run = get_run(run_id, session=session)
        except LookupError:
            raise CliError(no_update(run_id)) from None
        if not reason.strip():
            answer = "refusing" if not approved else "approving"
            raise CliError(f"{answer} run {run_id} needs --reason TEXT (it is recorded and shown)")
        if not run.needs_approval or run.approved_by:
            raise CliError(f"run {run_id} is not waiting for approval")
        state = RunState(run.state)
        if state is RunState.paused:  # paused at its gate, or before it: no process waits for an answer
            raise CliError(
                f"run {run_id} is paused, not waiting at its approval gate: `upkeep resume {run_id}` brings "
                f"it back there, then answer; not {'approved' if approved else 'refused'}"
            )
        if not state.active:
            raise CliError(f"run {run_id} is {state}: not waiting for approval")
        if not run.flow_run_id:
            raise CliError(f"run {run_id} has not reached its approval gate yet")
        # Two operators answering at once (one approving, one refusing) must not both be told
        # "done": Prefect's resume endpoint reads "paused" without a lock, so both resumes can be
        # accepted and the flow acts on whichever input it reads. The answer is given while this
        # transaction holds the run's row (PostgreSQL) or the write lock (SQLite, BEGIN IMMEDIATE):
        # the second answer waits here, then finds the run no longer paused and is refused.
        verb = "approve" if approved else "refuse"
        _hold_state(run, run.state, verb, session)
        session.refresh(run)  # read under the row's lock: a pause/cancel or an answer before it counts
        if run.requested_action:
            raise CliError(
                f"run {run_id}: `upkeep {run.requested_action}` came first (the run stops at its approval "
                f"gate): not {_PAST[verb]}; see `upkeep show {run_id}`"
            )
        if run.approved_by or run.reason.startswith(REFUSED):
            raise CliError(
                f"run {run_id} was answered at its approval gate just now (another answer came first): "
                f"not {_PAST[verb]}; see `upkeep show {run_id}`"
            )
        # The answer on our record too, in this transaction: a pause/cancel deciding next reads it (the
        # flow records the same when it wakes, and the decision's audit event).
        if approved:
            run.approved_by = actor
        else:
            run.reason = refusal(actor, reason)
        session.add(run)
        # The decision too: the gate's process may be gone (killed while it waited), and the answer
        # then stands when the run is taken over (flows/approval.py) with nothing else to record it.
        session.add(decision(run_id, actor, approved=approved, reason=reason))
        # Written before the gate is answered: a write the database refuses (a lock timeout, a full disk,
        # a value it cannot hold) must not leave the gate answered, the run going on, and the operator
        # told it failed. Only the COMMIT itself can still fail after the answer: then the gate records
        # the answer itself, as it does one typed in the Prefect UI, and the operator is told so.
        try:
            session.flush()
        except DBAPIError as exc:
            raise CliError(
                f"run {run_id}: the database refused to record the answer ({_db_cause(exc)}): the gate was "
                f"not answered, still waiting; not {_PAST[verb]}"
            ) from None
        try:
            answer_gate(UUID(run.flow_run_id), {"approved": approved, "approver": actor, "reason": reason})
        except GateNotAsking:
            # Who asks again, as the lease rules read the holder (adv62): gone, the take-over; alive (the
            # question's save slow under load), the gate itself a moment later: no take-over comes.
            if dead := _gate_not_answering(run, "asks again"):
                later = dead
            else:
                later = (
                    f"its process ({lease.holder_label(run.lease_owner or '')}) still holds the run: "
                    f"answer again once `upkeep show {run_id}` says it waits for approval"
                )
            raise CliError(
                f"run {run_id}: its gate paused but has not asked its question after {GATE_PATIENCE:g} s: "
                f"not {_PAST[verb]}; {later}"
            ) from None
        except (NotPausedError, FlowPauseTimeout, RuntimeError) as exc:
            raise CliError(
                f"run {run_id} is no longer waiting for approval ({exc}; another answer came first, "
                f"or the wait timed out): not {_PAST[verb]}; see `upkeep show {run_id}`"
            ) from None
        try:
            session.commit()
        except DBAPIError as exc:  # the COMMIT itself (a connection lost then): the gate has the answer
            raise CliError(
                f"run {run_id}: the gate took the answer ({_PAST[verb]}), but recording it here failed "
                f"({_db_cause(exc)}): its process records it as it wakes (if that process is gone, the "
                f"take-over asks again); see `upkeep show {run_id}`"
            ) from None
        # Prefect takes an answer for a killed process's pause too: nothing carries the run on then until
        # a take-over, where the gate finds this answer recorded.
        does = "carries it on" if approved else "ends it"
        if dead := _gate_not_answering(run, does):
            return f"run {run_id} {_PAST[verb]}; {dead}"
        if unseen := _holder_unseen(run, "goes on" if approved else "ends", does):
            return f"run {run_id} {_PAST[verb]}; {unseen}"
    return f"run {run_id} {_PAST[verb]}"


def fleet_brake(name: str) -> dict[str, object] | None:
    """The fleet's brake as a scheduled update meets it (`upkeep request`, and `upkeep resume` of a stalled
    run planned for its next window) (after the run is written: the read may wait for
    the Prefect API, and planning is not refused for it): None without UPKEEP_CLUSTER_LIMIT; else the
    limit's name, `held` (True: it grants no slot, the dispatcher will hold the start; None: the API did
    not answer, was interrupted, or there is no PREFECT_API_URL: not known) and the one line saying so."""
    from flows.prefect_api import api_url
    from flows.product_update import limit_state

    if not name:
        return None
    if not api_url():
        # As the doctor: no temporary Prefect server is started for a look (10-40 s, unbounded, its log
        # lines around this one, and a throwaway server's limits; adv43).
        why = f"UPKEEP_CLUSTER_LIMIT {name!r}: not checked without PREFECT_API_URL"
        return {"limit": name, "held": None, "detail": _unchecked(why)}
    try:
        kind, why = limit_state(name, within=answer_seconds())
    except KeyboardInterrupt:
        # The run and its notice are committed: Ctrl-C in this wait (up to UPKEEP_PREFECT_ANSWER_SECONDS,
        # nothing on the screen) ends the read only. "aborted", exit 130, was a lie: the update was
        # planned, and the next `upkeep request` said it already had one (adv43).
        kind, why = "away", f"UPKEEP_CLUSTER_LIMIT {name!r}: its read was interrupted (Ctrl-C)"
    held = {"brake": True, "grants": False}.get(kind)
    if held:
        why = (
            f"the fleet is held: {why}; the start waits until the limit grants a slot (at least 1): if "
            "the brake outlasts the slot, the dispatcher moves the update to a later window and tells the "
            "customer"
        )
    elif held is None:
        why = _unchecked(why)
    return {"limit": name, "held": held, "detail": why}


def _unchecked(why: str) -> str:
    return f"whether the fleet is held could not be checked: {why}; the update is scheduled all the same"


def warn_unchecked(brake: dict[str, object] | None) -> None:
    """The one warning line of a brake `fleet_brake` could not read (the API silent or away, Ctrl-C, no
    PREFECT_API_URL): the update was planned all the same."""
    if brake is not None and brake["held"] is None:
        err_console.print(f"warning: {brake['detail']}", markup=False, soft_wrap=True)
