"""Product update: one cluster to a newer version, node by node. Reads like the runbook:

    download the package (verified) → pre-flight every node → [wait for approval] → distribute and
    verify on every node → for each node in order: check, upgrade, wait for health, verify → record

Every step is a named task; every remote action is recorded in the database before and after, so a
crashed run resumes (`run_id=`) where it stopped without upgrading any node twice. `upkeep pause` and
`upkeep cancel` are honoured between nodes (the node in progress always finishes), and at once while the
run waits before its first node: for a slot of the fleet's cluster limit, at the approval gate, for a
support tunnel, or for a node to settle. A run with a window whose wait for a cluster slot, for its
approval or in its pre-flight ended past the window's cutoff (no room left for a node) carries over to
the next window before it contacts a node again (after a slot, or taken up already past the cutoff:
no download, no pre-flight; after the gate: no copy; after a copy that took that long: no 'started');
the customer hears nothing was changed (a resumed run that had upgraded a node: 'partially done', as
between nodes), and an approval given stands there. A node holding the package this run copied there
earlier (verified again by its checksum) is not copied to again in the next window.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.settings import get_current_settings
from prefect.states import Failed
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from flows import lease
from flows.approval import wait_for_approval
from flows.failed_run_case import close_failure_case
from flows.outcomes import (
    TAKEN_OVER,
    alert_sre,
    carry_over,
    carry_over_tunnel_closed,
    fail_before_nodes,
    finish,
    mark_started,
    refused,
    window_closing,
)
from flows.outcomes import stop as outcomes_stop
from flows.plan import PlannedNode, UpdatePlan, plan_update
from flows.records import (
    every_node_done,
    mark_unknown,
    node_done,
    nodes_touched,
    off_the_start,
    recorded,
    stop_requested,
)
from flows.report import Progress, best_effort, one_line, shell_word, summary_artifacts
from flows.run_window import has_window, record_window, window_end
from flows.runtime import Runtime, current
from flows.steps import (
    NodeConnections,
    StepFailed,
    StopRequested,
    TunnelDown,
    closed_under,
    distribute,
    download,
    preflight,
    reach,
    untagged_steps,
    upgrade_node,
)
from inventory import repo
from inventory.cases import check_case_ref
from inventory.db import server_away, session_scope
from inventory.models import Cluster, RequestedAction, RunKind, RunState, UpgradeRun
from inventory.runs import (
    PAUSED_STOPPED_REASON,
    REFUSED,
    close_open_steps,
    create_run,
    get_run,
    stopped_for_now,
)
from tasks.failpoints import failpoint

T = TypeVar("T")


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


# Results are not persisted: our database records every run and step, and `upkeep show` reads them
# there. Naming the (never written) storage stops Prefect asking the server where results go: without
# it every flow run sent `GET /admin/storage` three times (bench/fleet.py --count-api, issue #19).
_RESULTS = Path(get_current_settings().results.local_storage_path)


@flow(
    name="product-update",
    flow_run_name=_flow_run_name,
    retries=0,
    persist_result=False,
    result_storage=_RESULTS,
)
def product_update(
    cluster: str,
    to_version: str,
    source: str = "",
    requested_by: str = "",
    run_id: int | None = None,
    case: str | None = None,
    require_approval: bool = False,
    lease_owner: str | None = None,
) -> dict[str, Any] | State[Any]:
    """Upgrade `cluster` to `to_version`; with `run_id`, resume that run instead of starting one.
    `lease_owner`: the claim (the dispatcher's, `upkeep resume`'s, `--on-worker`'s) this flow was
    started under (flows/lease.py). `source` unset: `ui` for a deployment run started in the Prefect UI
    or by `prefect deployment run`, `cli` for a flow called in-process."""
    runtime = current()
    log = get_run_logger()
    plan, run_id, owner = _claim(
        runtime, cluster, to_version, source, requested_by, run_id, case, require_approval, lease_owner
    )
    log.info("run %s: %s (%d nodes)", run_id, plan.label, len(plan.nodes))

    tag_flow_run(runtime, run_id)
    try:
        # The lease first: waiting for a cluster slot can take long, and the run is held meanwhile.
        with lease.hold(runtime, run_id, owner) as heartbeat:
            try:
                # A run whose every node was verified (its process died before recording the end) needs
                # no slot: `upkeep resume` skips the brake for it (adv39), and queued at a full limit it
                # waited as long as other clusters took to record a done update (adv40).
                # Asked only with a limit set: the path without one stays free of queries (#19).
                done = bool(runtime.cluster_limit) and every_node_done(
                    runtime.engine, run_id, (node.id for node in plan.nodes)
                )
                slot = nullcontext("") if done else cluster_slot(runtime, run_id, owner)
                with slot as stop, untagged_steps():
                    result = (
                        _slot_wait_ended(runtime, plan, run_id, stop)
                        if stop  # paused/cancelled/taken over while it waited: no slot, nothing done
                        else _no_room_at_the_start(runtime, plan, run_id, owner)
                        or _carry_out(runtime, plan, run_id, heartbeat)
                    )
            except ClusterLimitUnusable as unusable:  # our setting: vendor-side, unless a node was upgraded
                if not heartbeat.held():
                    raise
                if (ended := _end_for_the_limit(runtime, plan, run_id, heartbeat, str(unusable))) == "failed":
                    raise
                result = _result(run_id, plan, ended, {})  # every node was done: no slot was needed
    except Exception as exc:
        reason = _failed_reason(runtime, run_id)
        if reason is None:  # not a failure of the run (the database away, the lease lost): as it is
            raise
        summary_artifacts(runtime, plan, run_id, "failed")
        # The run header in the Prefect UI shows this message: the one-line cause, not a traceback.
        return Failed(message=one_line(reason or str(exc)))
    if result["state"] == "succeeded":
        close_failure_case(runtime, run_id)  # a retried run that now succeeded: its failure's case
    if result["state"] != TAKEN_OVER:  # the process that took it over tells its own story
        summary_artifacts(runtime, plan, run_id, result["state"])
    if result["state"] == "failed":
        return Failed(message=one_line(_failed_reason(runtime, run_id) or "failed"))
    return result


def _failed_reason(runtime: Runtime, run_id: int) -> str | None:
    """The recorded reason if the run ended failed, else None (also when the record cannot be read)."""
    try:
        with session_scope(runtime.engine) as session:
            run = get_run(run_id, session=session)
            return run.reason if run.state == RunState.failed else None
    except Exception:
        return None


def tag_flow_run(runtime: Runtime, run_id: int) -> None:
    """The same tags on every update flow run however it was started (CLI, dispatcher, `prefect
    deployment run`, a retry from the UI): `customer:`, `cluster:`, `source:`, and `release:` or
    `case:` where they apply, from our record. Added to the run's own tags; best effort."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        cluster = session.get(Cluster, run.cluster_id)
        assert cluster is not None
        tags = update_tags(repo.customer_of(cluster, session=session).name, cluster.name, run)
    if flow_run.id is None or set(tags) <= set(flow_run.tags):
        return

    def update() -> None:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(flow_run.id), tags=sorted({*flow_run.tags, *tags}))

    best_effort("flow run tags", update)


def update_tags(customer: str, cluster: str, run: UpgradeRun) -> list[str]:
    tags = ["product-update", f"customer:{customer}", f"cluster:{cluster}", f"source:{run.source}"]
    tags += [f"release:{run.to_version}"] if run.kind is RunKind.CLOUD_RELEASE else []
    tags += [f"case:{run.case_ref}"] if run.case_ref else []
    return tags


class ClusterLimitUnusable(Exception):
    """UPKEEP_CLUSTER_LIMIT names no Prefect global concurrency limit, or one no run can ever take a slot
    of (its limit 0): a setup error, ours. (A disabled limit is not enforced: Prefect grants every ask.)"""


def limit_unusable(name: str, *, away: bool = False, within: float | None = None) -> str:
    """Why the Prefect global concurrency limit `name` can never grant a slot, as the one line the run
    fails with: there is none of that name, or its limit is 0 (Prefect answers every ask 422); "" when
    it looks usable (a disabled limit enforces nothing) or cannot be asked (an API away is not a setup
    error, and the run is left to resume as before); with `away`, the API not answering is said too
    (`upkeep update --check`, which must not call an unread limit usable: adv40). `within`: seconds the
    whole read may take (flows/prefect_api.py; the CLI's pre-checks): an API that does not answer by
    then is said, with or without `away` (a command must not start what waits on it). An API that
    answered the read with an error or with no limit at all ("erred") is said with `away` (the CLI's
    pre-checks, `upkeep/updates.py` `cluster_limit_grants`): read as away, the update went on and failed
    on the limit, as "a bug in Upkeep"."""
    kind, why = limit_state(name, within=within)
    if kind in ("away", "erred") and not away:
        return ""
    return f"{why}; `upkeep update` needs it" if kind in ("away", "silent", "erred") else why


def limit_state(name: str, *, within: float | None = None) -> tuple[str, str]:
    """("grants", ""), ("brake", why: none of that name, or at 0 and enabled), ("away", why: the API did
    not answer, or not within `within` seconds: "silent"; "erred": it answered the read with an error
    status or with what is no limit) of the Prefect limit `name`, each `why` one line naming the setting
    (and, when it answered, the API, its credentials masked). One API read."""

    import httpx
    from prefect.exceptions import ObjectNotFound

    from flows.prefect_api import (
        NoAnswer,
        answered_within,
        path_name,
        prefects_not_found,
        quick_client,
        scrubbed,
    )

    setting = f"UPKEEP_CLUSTER_LIMIT {name!r}"

    def read() -> Any:
        with quick_client(within) as client:
            # Quoted: Prefect's client puts the name into the path as it is, and a name may hold '#' or
            # '?' (Prefect bans only / % & > <): read unquoted, 'a#b' was 'a', missing, and the
            # dispatcher held the whole fleet for a working limit (adv38); dots too: '..' was a dot segment
            # the URL resolved away, Prefect's route miss read as missing (adv62).
            return client.read_global_concurrency_limit_by_name(path_name(name))

    try:
        limit = answered_within(within, read)
    except ObjectNotFound as exc:
        if not prefects_not_found(getattr(exc.http_exc, "response", None)):
            # A 404 not of Prefect's (a proxy or path router in front of the API): the limit may well
            # exist behind it; "no limit of that name, create it" sent the operator to make a second (adv48).
            # Still a brake: no run gets a slot through that route. Read as 'erred' the tick took it for
            # the API away, held nothing, told nobody and started every due run into the same 404 (adv62).
            return "brake", (
                f"{setting}: {_limit_read_failed(exc.http_exc)}, not Prefect's own 'not found' (a proxy in "
                "front of the API?)"
            )
        return "brake", (
            f"{setting}: no Prefect global concurrency limit has that name (create it with `prefect gcl "
            "create NAME --limit N`, or unset the setting)"
        )
    except NoAnswer as exc:
        return "silent", f"{setting}: {exc}"
    except httpx.TransportError as exc:  # refused, reset, not HTTP: named, as the API that erred is
        answer = scrubbed(one_line(str(exc) or type(exc).__name__))
        return (
            "away",
            f"{setting}: the Prefect API ({_api_shown()}) did not answer the limit's read ({answer})",
        )
    except Exception as exc:  # it answered: an error status, or what is no limit (garbage, another server)
        return "erred", f"{setting}: {_limit_read_failed(exc)}"
    # A disabled limit (`prefect gcl disable`) is enforced on nothing: Prefect's increment skips it and
    # grants at once, so at 0 it is no brake; read as one, every command refused an update that runs
    # and the dispatcher held the fleet on the operator's 'limit off' (adv40).
    if limit.limit < 1 and limit.active:
        return "brake", (
            f"{setting}: the Prefect limit allows {limit.limit} clusters at once; set it to at least 1 with "
            f"`prefect gcl update {shell_word(name)} --limit N`, or unset the setting"
        )
    return "grants", ""


def _api_shown() -> str:
    """PREFECT_API_URL fit for one line (prefect_api `shown`), or what stands for it."""
    from flows.prefect_api import api_url, shown

    try:
        return shown(api_url()) or "the temporary Prefect server"
    except Exception:  # Prefect's settings unreadable: the API is named without its URL
        return "PREFECT_API_URL"


def _limit_read_failed(exc: Exception) -> str:
    """'the Prefect API (URL) answered the limit's read with HTTP 500 Internal Server Error' (or with
    something that is not a limit: the exception's one line), the URL shown bare (prefect_api `shown`)."""
    import httpx

    from flows.prefect_api import not_a_limit, scrubbed

    where = _api_shown()
    if isinstance(exc, httpx.HTTPStatusError):
        answer = f"HTTP {exc.response.status_code} {scrubbed(exc.response.reason_phrase)}".rstrip()
    elif isinstance(exc, httpx.TooManyRedirects):
        answer = "redirects without end (or more than 20)"
    else:
        answer = f"something that is not a limit ({scrubbed(not_a_limit(exc))})"
    return f"the Prefect API ({where}) answered the limit's read with {answer}"


def _end_for_the_limit(
    runtime: Runtime, plan: UpdatePlan, run_id: int, heartbeat: lease.Heartbeat, why: str
) -> str:
    """The run ends failed for an unusable cluster limit (`why`): a vendor-side failure before any node,
    unless it is a resumed run that had upgraded a node (paused, carried over): then, as any failure once
    nodes were touched, the customer hears it failed with each node's version and the SRE's run-failed
    alert (with its case) says so; "no node touched; customer not notified" was false there (adv35).
    Returns its state: a run whose every node was verified (its process died before recording the end)
    needed no slot and is recorded succeeded; 'failed' told of a complete update, with a case (adv37)."""
    if every_node_done(runtime.engine, run_id, (node.id for node in plan.nodes)):
        finish(runtime, plan, run_id, RunState.succeeded, owner=heartbeat.owner)
        return "succeeded"
    if not nodes_touched(runtime.engine, run_id):
        fail_before_nodes(runtime, plan, run_id, why)
        return "failed"
    finish(runtime, plan, run_id, RunState.failed, reason=why, owner=heartbeat.owner)
    alert_sre(runtime, run_id, why)
    return "failed"


@contextmanager
def cluster_slot(runtime: Runtime, run_id: int, owner: str) -> Iterator[str]:
    """One slot of the fleet-wide limit on clusters upgraded at once, held for the whole cluster; yields
    "". A run waiting for it looks at its pending `upkeep pause|cancel` every `slot_poll` seconds: one
    asked ends the wait at once and is yielded ("pause", "cancel") with no slot held, as is one asked
    just before the slot was granted (the slot given back first, before any download). So is the run
    taken over by another process (its lease no longer `owner`'s): `TAKEN_OVER`, left to that one."""
    if not runtime.cluster_limit:  # the fleet benchmark's path: no query, no request added here
        yield ""
        return
    from prefect.concurrency.sync import concurrency

    _quiet_full_limit()
    # A full limit can hold this run for as long as other clusters take: not while it holds one of the
    # dispatcher's start slots, which would keep clusters that could go from starting.
    off_the_start()
    next_ask = 0.0  # time.monotonic() of the next ask for a slot
    while not (stop := _slot_look(runtime, run_id, owner)):  # a look every `slot_poll` seconds at most
        if (left := next_ask - time.monotonic()) > 0:
            time.sleep(min(runtime.slot_poll, left))
            continue
        # One ask at a time (max_retries=0: a full limit answers 423 at once), again after the server's
        # Retry-After (as Prefect's own retries would), not `concurrency(timeout_seconds=)`: that timeout
        # cancels the request inside Prefect's acquisition service, and a grant the server made as it
        # fired is lost with the response (Prefect gives a late grant back only when the caller itself
        # is cancelled), the slot held by nobody until its lease (lease_duration, 300 s) runs out and
        # the server's repossessor (every 15 s) takes it back. And that service asks for one process's
        # slots one item at a time, each item's timeout starting when its turn comes: the dispatcher's
        # N runs waiting on the limit would each see a stop only after up to N timeouts.
        # strict: a limit that does not exist is a setup error, said at once. But a slot lease that
        # cannot be renewed (the Prefect API away for a while) must not cancel the flow in the middle of
        # a node: our own run lease (flows/lease.py) guards the run; the limit may briefly overshoot.
        with ExitStack() as held:
            try:
                held.enter_context(
                    concurrency(
                        runtime.cluster_limit,
                        occupy=1,
                        max_retries=0,
                        strict=True,
                        raise_on_lease_renewal_failure=False,
                    )
                )
            except Exception as exc:  # Prefect's ConcurrencySlotAcquisitionError (a private module's)
                if _limit_full(exc):
                    next_ask = time.monotonic() + _retry_after(exc, runtime.slot_poll)
                    continue
                # Without this the run was left running with its lease given back: an orphan the next
                # tick took over and failed the same way, every tick, our record saying nothing
                # (adversarial pass adv21; a limit of 0, which Prefect answers 422, alike).
                if why := limit_unusable(runtime.cluster_limit):
                    raise ClusterLimitUnusable(why) from exc
                raise
            if not (stop := _slot_look(runtime, run_id, owner)):
                yield ""
                return
        break  # asked (or taken over) while the slot was being granted: given back above, before anything
    yield stop


NOTHING_CHANGED = (
    "the update could not begin in time to finish within your maintenance window. Nothing was changed on "
    "your cluster; it starts in the next window instead"
)


def _no_room_left(
    runtime: Runtime, plan: UpdatePlan, run_id: int, waited: str, outcomes: dict[str, str], owner: str
) -> dict[str, Any] | None:
    """After a wait before the first node (a cluster slot, the approval gate, the package's copy): the
    run's result if its window has no room left for a node now (carried over, the customer told nothing
    was changed), else None. `waited`: what the run waited for, `{now}` the time the wait ended. A run
    without a window (an SRE's `upkeep update`, an overridden window) never stops here (`window_closing`).
    A resumed run that had already upgraded a node is carried over as at the window's end between
    nodes ('partial' with each node's version, then 'rescheduled'): "nothing was changed" would be
    false there (adversarial pass adv35)."""
    # The window first: asked at every run's start, and open (or no window at all) almost always.
    if not window_closing(runtime, run_id):
        return None
    if every_node_done(runtime.engine, run_id, (node.id for node in plan.nodes)):
        return None  # nothing left to start (a take-over after the last node's verify): recorded as done
    if nodes_touched(runtime.engine, run_id):
        return _result(run_id, plan, carry_over(runtime, plan, run_id, owner=owner), outcomes)
    now = f"{runtime.clock():%Y-%m-%d %H:%M} UTC"
    why = (
        f"{waited.format(now=now)}, after the window had no room left for a node; nothing changed on any node"
    )
    moved = carry_over(runtime, plan, run_id, why=why, customer_reason=NOTHING_CHANGED, owner=owner)
    return _result(run_id, plan, moved, outcomes)


def _approval_pending(runtime: Runtime, run_id: int) -> bool:
    """Whether the approval gate will ask (the run needs an approval not given yet)."""
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        return bool(run.needs_approval and not run.approved_by)


def _no_room_at_the_start(
    runtime: Runtime, plan: UpdatePlan, run_id: int, owner: str
) -> dict[str, Any] | None:
    """Before the download, pre-flight and copy reach the customer's nodes: the run's result if its
    window has no room left now, else None. With a fleet cluster limit, once its slot is granted (the wait
    can last hours; the slot is given back as the result leaves `cluster_slot`). Without one too: a run
    taken over (the dispatcher's take-over of an orphan, `upkeep resume`) already past its cutoff
    downloaded the package and pre-flighted every node over SSH before the after-gate look carried it
    over. A run without a window (`upkeep update`, an overridden window) goes on (`window_closing`)."""
    if runtime.cluster_limit:
        waited = f"waited for a slot of the cluster limit {runtime.cluster_limit!r} until {{now}}"
    else:
        waited = "taken up at {now} (started, resumed or taken over)"
    return _no_room_left(runtime, plan, run_id, waited, {}, owner)


def _slot_look(runtime: Runtime, run_id: int, owner: str) -> str:
    """A waiting run's look (one read, repeated if the database server drops the connection):
    `TAKEN_OVER` if another process holds its lease now, else its pending stop ("pause", "cancel") or
    "". The lease first: a stop seen by a process that lost the run is the new owner's to honour."""
    from inventory.db import retrying

    query = select(UpgradeRun.lease_owner, UpgradeRun.requested_action).where(col(UpgradeRun.id) == run_id)
    held_by, action = retrying(runtime.engine, lambda conn: conn.execute(query).one())
    return TAKEN_OVER if held_by != owner else str(action)


def _slot_wait_ended(runtime: Runtime, plan: UpdatePlan, run_id: int, stop: str) -> dict[str, Any]:
    """The result of a run whose wait for a cluster slot ended with `stop` (no slot held, nothing done)."""
    if stop == TAKEN_OVER:  # its new owner records and tells how it ends
        return _left_to_its_new_owner(run_id, plan, {})
    return _result(run_id, plan, outcomes_stop(runtime, plan, run_id, stop), {})


def _limit_full(exc: BaseException | None) -> bool:
    """Whether a slot acquisition failed only because the limit is full (HTTP 423 Locked): `exc`
    Prefect's ConcurrencySlotAcquisitionError, or the HTTP error it wraps."""
    import httpx

    cause = exc if isinstance(exc, httpx.HTTPStatusError) else getattr(exc, "__cause__", None)
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def _retry_after(exc: BaseException, default: float) -> float:
    """The seconds a full limit's 423 says to wait before asking again (Retry-After), else `default`."""
    try:
        return max(0.0, float(exc.__cause__.response.headers["Retry-After"]))  # type: ignore[union-attr]
    except Exception:
        return default


class _FullLimitNotAnError(logging.Filter):
    """Prefect's acquisition service logs every failed ask at ERROR ("Service ... failed to process
    item"), though the asker gets the error itself; with max_retries=0 a full limit is such a failure
    every `slot_poll` seconds of a wait that can last hours. Only that record is dropped: the failed
    future is the record's last argument, and any other failure is still logged. Never raises: a
    filter that raises makes the logging call raise, inside Prefect's service loop, ending it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self._full_limit(record)
        except Exception:  # an odd record: logged as it is
            return True

    @staticmethod
    def _full_limit(record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if not (
            isinstance(record.msg, str)
            and record.msg == "Service %r failed to process item %r"
            and len(args) == 2
            and isinstance(args[0], str)
            and args[0] == "ConcurrencySlotAcquisitionWithLeaseService"
            and isinstance(args[1], tuple)
            and args[1]
            and isinstance(future := args[1][-1], concurrent.futures.Future)
            and future.done()
            and not future.cancelled()
        ):
            return False
        return _limit_full(future.exception())


def _quiet_full_limit() -> None:
    """Install `_FullLimitNotAnError` on Prefect's concurrency logger, once."""
    from prefect._internal.concurrency import logger as concurrency_logger

    if not any(isinstance(f, _FullLimitNotAnError) for f in concurrency_logger.filters):
        concurrency_logger.addFilter(_FullLimitNotAnError())


def _carry_out(runtime: Runtime, plan: UpdatePlan, run_id: int, heartbeat: lease.Heartbeat) -> dict[str, Any]:
    log = get_run_logger()
    conns = NodeConnections(runtime, plan)
    outcomes: dict[str, str] = {}
    progress = Progress(plan)
    try:
        package = download(plan, run_id, runtime)
        try:
            preflight(plan, run_id, runtime, conns, package.stat().st_size)
        except StopRequested:  # `upkeep pause|cancel` ended its wait for a node left mid-upgrade
            if (ended := _stop_if_asked(runtime, plan, run_id, heartbeat, outcomes)) is not None:
                return ended  # not a failure: the node is asked again when the run resumes
            raise  # the stop gone (another process took the run): never go on with the node unjudged
        except TunnelDown as closed:
            # Started in its window with the customer's tunnel closed (and nothing else wrong): theirs
            # to open, not a failure. Waited for a while; still closed, the run moves to the next
            # window and they are told the command.
            if closed.problems or not in_window(runtime, run_id):
                raise
            size = package.stat().st_size

            def again() -> None:
                reach(plan, conns)  # records nothing while a tunnel stays closed
                preflight(plan, run_id, runtime, conns, size)  # once all answer: recorded, as at the start

            still = _wait_for_tunnels(runtime, plan, run_id, conns, closed, again)
            ended = _after_tunnel_wait(runtime, plan, run_id, heartbeat, outcomes, still)
            if ended is not None:
                return ended
        # A pause/cancel asked during the download or pre-flight: honoured before the approval gate
        # (which would wait for an answer) and before the package is copied.
        if (ended := _stop_if_asked(runtime, plan, run_id, heartbeat, outcomes)) is not None:
            return ended
        asked = _approval_pending(runtime, run_id)
        gate = wait_for_approval(runtime, run_id, plan, held=heartbeat.held)
        if gate == "refused":
            refused(
                runtime, plan, run_id, owner=heartbeat.owner
            )  # the customer (if told) and the SRE hear why
            return _result(run_id, plan, "cancelled", outcomes)
        # Stopped at the gate (the pause woken), or asked just after an approval: now, not after the copy.
        if (ended := _stop_if_asked(runtime, plan, run_id, heartbeat, outcomes)) is not None:
            return ended
        if gate == "stopped":  # woken for a stop after the run was taken over: its new owner's now
            return _left_to_its_new_owner(run_id, plan, outcomes)
        assert gate == "approved", gate
        if not heartbeat.held():  # taken over while the gate waited: its new owner judges the window
            return _left_to_its_new_owner(run_id, plan, outcomes)
        # An approval can come days after the gate opened (and a pre-flight can wait for nodes to settle):
        # past the window's cutoff, nothing is copied.
        waited = "approved at {now}" if asked else "pre-flight done at {now}"
        if (ended := _no_room_left(runtime, plan, run_id, waited, outcomes, heartbeat.owner)) is not None:
            return ended
        # A staged copy changes nothing the customer runs: a distribute failure (a package that
        # arrives corrupted, a staging directory that is full) is still vendor-side and theirs to
        # hear nothing about. Once every node holds the package, the first upgrade is next.
        _, ended = _despite_tunnel_closing(
            runtime,
            plan,
            run_id,
            heartbeat,
            conns,
            outcomes,
            partial(distribute, plan, run_id, runtime, conns, package),
        )
        if ended is not None:
            return ended
        # The copy itself can outlast the window (a large package, a slow link, a support tunnel closed
        # under it and waited for): carried over before the customer hears 'started' (adv35). Only by
        # the run's owner: a copy that stood still that long may have lost the run to a take-over.
        if not heartbeat.held():
            return _left_to_its_new_owner(run_id, plan, outcomes)
        staged = "package staged on every node (nothing installed) at {now}"
        if (ended := _no_room_left(runtime, plan, run_id, staged, outcomes, heartbeat.owner)) is not None:
            return ended
        mark_started(runtime, run_id)  # the first node is about to be touched: now the customer hears
        for number, node in enumerate(plan.nodes, 1):
            if node_done(runtime.engine, run_id, node.id):
                outcomes[node.hostname] = "done before resume"
            else:
                if not heartbeat.held():  # taken over while this process stood still: not ours now
                    return _left_to_its_new_owner(run_id, plan, outcomes)
                if (ended := _stop_if_asked(runtime, plan, run_id, heartbeat, outcomes)) is not None:
                    return ended
                if window_closing(runtime, run_id):
                    moved = carry_over(runtime, plan, run_id, owner=heartbeat.owner)
                    return _result(run_id, plan, moved, outcomes)
                upgrade = partial(upgrade_node, plan, run_id, runtime, conns, node, heartbeat.held)
                outcome, ended = _despite_tunnel_closing(
                    runtime, plan, run_id, heartbeat, conns, outcomes, upgrade, node
                )
                if ended is not None:
                    return ended
                assert outcome is not None
                outcomes[node.hostname] = outcome
                # The console's line; the UI reads it in the progress artifact below (one API call).
                log.info("%s: %s", node.hostname, outcomes[node.hostname], extra={"send_to_api": False})
                failpoint(f"after-node:{node.position}")
            progress.update(number, node.hostname, outcomes[node.hostname])
    except Exception as exc:
        if server_away(exc):
            # The database went away for longer than inventory.db waits, not the update: failing
            # the run would tell the customer it failed and open a P1 over a database outage.
            # Left running; `upkeep resume` (or the dispatcher, once the lease runs out) goes on.
            log.error("run %s: the database is unavailable (%s); left running to resume", run_id, exc)
            raise
        if not heartbeat.held():  # another process holds the run now: its record, notices, case
            log.error("run %s: taken over by another process; not recording this failure: %s", run_id, exc)
            return _result(run_id, plan, TAKEN_OVER, outcomes)
        log.error("run %s failed: %s", run_id, exc)
        if not nodes_touched(runtime.engine, run_id):
            fail_before_nodes(runtime, plan, run_id, str(exc))  # vendor-side: the customer hears nothing
            raise
        try:
            finish(runtime, plan, run_id, RunState.failed, reason=str(exc), owner=heartbeat.owner)
        except lease.LeaseHeld as lost:
            log.error("run %s: %s; this process stops without recording (%s)", run_id, lost, exc)
            return _result(run_id, plan, TAKEN_OVER, outcomes)
        alert_sre(runtime, run_id, str(exc))
        raise
    finally:
        conns.close()
    try:
        finish(runtime, plan, run_id, RunState.succeeded, owner=heartbeat.owner)
    except lease.LeaseHeld as lost:
        log.error("run %s: %s; this process leaves the record to it", run_id, lost)
        return _result(run_id, plan, TAKEN_OVER, outcomes)
    return _result(run_id, plan, "succeeded", outcomes)


def _stop_if_asked(
    runtime: Runtime, plan: UpdatePlan, run_id: int, heartbeat: lease.Heartbeat, outcomes: dict[str, str]
) -> dict[str, Any] | None:
    """The run's result if an `upkeep pause|cancel` is pending (it ends here, as between nodes), else None.
    Asked, as before each node, whether the run is still ours: a process that stood still at its gate
    (for days) while the run was taken over must not end it under its new owner, who honours the stop."""
    stop = stop_requested(runtime.engine, run_id)
    if stop and not heartbeat.held():
        return _left_to_its_new_owner(run_id, plan, outcomes)
    return _result(run_id, plan, outcomes_stop(runtime, plan, run_id, stop), outcomes) if stop else None


def _left_to_its_new_owner(run_id: int, plan: UpdatePlan, outcomes: dict[str, str]) -> dict[str, Any]:
    """The result of a run another process took over (its lease): that one records and tells its end."""
    get_run_logger().error("run %s: taken over by another process; leaving it to that one", run_id)
    return _result(run_id, plan, TAKEN_OVER, outcomes)


def _after_tunnel_wait(
    runtime: Runtime,
    plan: UpdatePlan,
    run_id: int,
    heartbeat: lease.Heartbeat,
    outcomes: dict[str, str],
    still: TunnelDown | None,
    during: str = "",
) -> dict[str, Any] | None:
    """After waiting for closed support tunnels: the run's result if it ends here, None to go on (the
    tunnels are open again). Asked to pause/cancel, or taken over, while it waited: that first, never
    a carry-over (a cancelled update must not be announced as rescheduled)."""
    if not heartbeat.held():
        return _left_to_its_new_owner(run_id, plan, outcomes)
    if (ended := _stop_if_asked(runtime, plan, run_id, heartbeat, outcomes)) is not None:
        return ended
    if still is not None:
        moved = carry_over_tunnel_closed(
            runtime, plan, run_id, still.closed, during=during, owner=heartbeat.owner
        )
        return _result(run_id, plan, moved, outcomes)
    return None


def _despite_tunnel_closing(
    runtime: Runtime,
    plan: UpdatePlan,
    run_id: int,
    heartbeat: lease.Heartbeat,
    conns: NodeConnections,
    outcomes: dict[str, str],
    step: Callable[[], T],
    node: PlannedNode | None = None,
) -> tuple[T | None, dict[str, Any] | None]:
    """Take `step` (the package's copy, or `node`'s upgrade): (its answer, None), or (None, the run's
    result) when the customer closed a support tunnel under it and the run stopped while it waited for
    it. Taken again once the tunnel is back; any other failure raises as it is."""
    while True:
        try:
            return step(), None
        except StepFailed as failed:
            lost = (
                closed_under(plan, runtime, failed, dict(conns.opened))
                if in_window(runtime, run_id)
                else None
            )
            if lost is None:
                raise
            ended = _tunnel_lost(runtime, plan, run_id, heartbeat, conns, node, lost, failed, outcomes)
            if ended is not None:
                return None, ended
            # The tunnel is back, but the wait may have outlasted the window as the inventory says now
            # (an import took it back meanwhile): the node is not started again after the cutoff.
            if node is not None and window_closing(runtime, run_id):
                moved = carry_over(runtime, plan, run_id, owner=heartbeat.owner)
                return None, _result(run_id, plan, moved, outcomes)


def _tunnel_lost(
    runtime: Runtime,
    plan: UpdatePlan,
    run_id: int,
    heartbeat: lease.Heartbeat,
    conns: NodeConnections,
    node: PlannedNode | None,
    closed: TunnelDown,
    failed: StepFailed,
    outcomes: dict[str, str],
) -> dict[str, Any] | None:
    """A support tunnel closed under `node`'s upgrade, or under the package's copy (`node` None:
    nothing changed yet). What the node's step did there is unknown (recorded so) and is asked once the
    tunnel is back. The run waits for it within the window, as at the window's start: None once every
    node answers again (the caller takes the step again; a node's begins by asking its version), else
    the run's result (paused, cancelled, taken over, or carried over to the next window)."""
    if node is not None:
        mark_unknown(runtime.engine, run_id, node.id, f"support tunnel closed; outcome unknown: {failed}")
    during = f"the upgrade of {node.hostname}" if node is not None else "the copy of the package to the nodes"
    then = "its outcome is asked when it is back" if node is not None else "copied again when it is back"
    note = f"closed during {during}; {then}"
    still = _wait_for_tunnels(runtime, plan, run_id, conns, closed, lambda: reach(plan, conns), note=note)
    return _after_tunnel_wait(runtime, plan, run_id, heartbeat, outcomes, still, during=during)


def _wait_for_tunnels(
    runtime: Runtime,
    plan: UpdatePlan,
    run_id: int,
    conns: NodeConnections,
    closed: TunnelDown,
    look: Callable[[], None],
    note: str = "",
) -> TunnelDown | None:
    """Wait up to `runtime.tunnel_wait` (and never past the time when one node no longer fits in the
    window) for the closed tunnels, taking `look` again every `tunnel_poll` seconds with fresh
    `conns` (pre-flight at the window's start; mid-run, whether every node answers; `note` says why it
    waits then). Returns None once `look` passes, or the closed tunnels still standing.

    The wait is one step of the run ('tunnel-wait', no node), ended with how many looks it took: the
    looks themselves record nothing (at the window's start the pre-flight runs, recorded, only once
    every node answers), where the pre-flight of every look wrote one row per node (~60 per node in a
    15-minute wait).

    The run keeps its dispatcher slot and its cluster lease while it waits, on purpose: the wait is
    bounded (`tunnel_wait`, default 15 min, never past the last moment one node fits in the window);
    the lease keeps any other process off the cluster and a heartbeat shows the run alive; a pause or
    cancel is honoured at the next look; and an opened tunnel is used within `tunnel_poll` seconds.
    Giving the slot back would mean a run 'planned but started', claimed again by a later tick with its
    wait's state kept somewhere - more states for at most one worker of `max_running` for 15 minutes."""
    log = get_run_logger()
    now = runtime.clock()
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        end = window_end(run)
        room = (end - now - runtime.per_node_estimate) if end is not None else runtime.tunnel_wait
        budget = max(0.0, min(runtime.tunnel_wait, room).total_seconds())
        if run.requested_action:  # paused/cancelled already (its reason is kept): no waiting
            budget = 0.0
        waiting = (
            f"waiting up to {max(1, round(budget / 60))} min for the customer's support tunnel on "
            f"{', '.join(closed.closed)}" + (f" ({note})" if note else "")
        )
        if budget > 0:
            run.reason = waiting
            session.add(run)
    conns.close()  # a connection cut under a step, or that failed to open, is not reused
    if budget <= 0:
        return closed
    log.warning("run %s: %s", run_id, waiting)
    deadline = time.monotonic() + budget
    still: TunnelDown | None = closed
    looks = 0
    with recorded(runtime.engine, run_id, None, "tunnel-wait", waiting) as step:
        while still is not None and time.monotonic() < deadline:
            if stop_requested(runtime.engine, run_id):  # `upkeep pause|cancel`: now, not after the wait
                break
            if window_closing(runtime, run_id):  # the window as the inventory says now: no node fits
                break
            time.sleep(min(runtime.tunnel_poll, max(0.0, deadline - time.monotonic())))
            conns.close()
            looks += 1
            try:
                look()
                still = None
            except StopRequested:  # its pre-flight's settle wait ended by the stop: honoured by the caller
                break
            except TunnelDown as again:
                if again.problems:
                    raise
                still = again
        step.output = (
            f"every node answered after {looks} look(s)"
            if still is None
            else f"still closed on {', '.join(still.closed)} after {looks} look(s)"
        )
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        if run.reason == waiting:  # not a cancel's 'cancelled by ...', written meanwhile
            run.reason = ""
            session.add(run)
    return still


def in_window(runtime: Runtime, run_id: int) -> bool:
    """Whether the run runs in a window (a planned slot the dispatcher started, or its resume), not
    an SRE's `upkeep update` for now."""
    with session_scope(runtime.engine) as session:
        return has_window(get_run(run_id, session=session))


def _claim(
    runtime: Runtime,
    cluster: str,
    to_version: str,
    source: str,
    requested_by: str,
    run_id: int | None,
    case: str | None,
    require_approval: bool,
    lease_owner: str | None,
) -> tuple[UpdatePlan, int, str]:
    """Plan, and either claim the cluster with a new run or take over the run being resumed; with
    the run's lease (returns its owner)."""
    from prefect.runtime import deployment, flow_run

    if case is not None:
        check_case_ref(case)  # a deployment's parameter is input too
    source = source or ("ui" if deployment.id else "cli")
    with session_scope(runtime.engine) as session:
        plan = plan_update(cluster, to_version, session=session)
        retried = _retried_run(session, run_id)
        if retried is not None:
            run = retried  # a failed flow run retried (from the Prefect UI): its run goes on from our record
        elif run_id is None:
            run = create_run(
                repo.get_cluster(cluster, session=session),
                to_version=to_version,
                source=source,
                requested_by=requested_by or runtime.actor,
                session=session,
            )
            run.case_ref, run.needs_approval = case, require_approval
        else:
            run = get_run(run_id, session=session, lock=True)  # a cancel deciding now waits for this
            if run.cluster_id != plan.cluster_id or run.to_version != to_version:
                raise RunMismatch(f"run {run_id} is not an update of {cluster} to {to_version}")
            if not RunState(run.state).active:
                raise RunMismatch(f"run {run_id} is {run.state}: only planned, running or paused runs resume")
            # An SRE's resume clears a pause or cancel asked earlier; a take-over of an orphan honours it.
            if lease_owner is None:
                run.requested_action = RequestedAction.none
            # What a dead process said it was doing (waiting for a support tunnel) is not what this one
            # does (it says so itself if it waits); a pending cancel's words stay, its ending tells them.
            # A refusal recorded at the approval gate (`upkeep approve --refuse`, the process there dead)
            # is an answer, not a dead process's words: the gate ends the run with it (flows/approval.py).
            if (
                run.state == RunState.running
                and run.requested_action == RequestedAction.none
                and not run.reason.startswith(REFUSED)
            ):
                run.reason = ""
            if stopped_for_now(run):
                # A stall (or an SRE's pause past its window) told the customer 'stopped' (a CANCEL at this
                # SEQUENCE); what the resume says next ('started', 'completed', ...) is a new version of
                # the update, so it supersedes a 'stopped' still in the outbox (a mail server down): at
                # the same SEQUENCE, delivered by due time, 'stopped' reached the customer after 'started'
                # and 'completed' (adv49). A pause past its window told is told no more once it goes on:
                # paused again, its next window's end tells 'stopped' again, at this new SEQUENCE.
                run.notice_sequence += 1
                run.reason = run.reason.removeprefix(PAUSED_STOPPED_REASON)
        run.state = RunState.running
        run.started_at = run.started_at or runtime.clock()
        record_window(run, runtime.clock(), session=session)  # the window it runs in, at every start
        run.flow_run_id = str(flow_run.id) if flow_run.id else None
        session.add(run)
        session.flush()
        owner = lease.acquire(
            session, run, runtime, expected=lease_owner, actor=requested_by or runtime.actor
        )
        if run_id is not None:  # what the process before this one left in flight, closed first
            found = f"interrupted: found started by {lease.holder_label(owner)} taking the run over"
            why = f"{found} at {runtime.clock():%H:%M:%S}; the node is asked its real state"
            close_open_steps(run_id, why, session=session)
        assert run.id is not None
        return plan, run.id, owner


def _retried_run(session: Session, run_id: int | None) -> UpgradeRun | None:
    """The failed run this flow run already carried out, when this is a retry of that flow run
    (Retry in the Prefect UI): reopened to resume from our record, so no node is upgraded twice.
    None when this flow run is new."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    query = select(UpgradeRun).where(UpgradeRun.flow_run_id == str(flow_run.id))
    run = session.exec(query.where(UpgradeRun.id == run_id) if run_id is not None else query).first()
    if run is None or run.state != RunState.failed:
        return None
    run.state, run.active_cluster_id, run.finished_at = RunState.running, run.cluster_id, None
    run.lease_owner = run.lease_until = None
    try:
        session.flush()  # the cluster's active-run claim: refused if another update runs there now
    except IntegrityError:
        raise RunMismatch(f"run {run.id} cannot be retried: its cluster has another active update") from None
    repo.record_audit(
        "prefect-ui",
        "run.retried",
        f"run/{run.id}",
        {"flow_run_id": str(flow_run.id), "failed": run.reason[:500]},
        session=session,
    )
    run.reason = ""
    return run


def _result(run_id: int, plan: UpdatePlan, state: str, outcomes: dict[str, str]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "cluster": plan.cluster,
        "to_version": plan.to_version,
        "state": state,
        "nodes": outcomes,
    }
