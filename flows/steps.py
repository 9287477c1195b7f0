"""The runbook steps of an update, each a named Prefect task: pre-flight, download, distribute, and
upgrade of one node. Finer actions inside a step are recorded as NodeSteps in our database."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TagsContext
from prefect.states import Cancelled, State

from flows.plan import PlannedNode, UpdatePlan
from flows.records import copies_staged, nodes_touched, nodes_upgrading, recorded, stop_requested
from flows.runtime import Runtime
from inventory.db import server_away
from tasks.failpoints import failpoint_soon
from tasks.node import NodeAgent, NodeCommandFailed
from tasks.ssh import (
    CommandTimeout,
    HostKeyError,
    RemoteError,
    RemoteResult,
    RemoteRunner,
    SshSettings,
    SshTarget,
    TunnelClosed,
    probe_tunnels,
)

log = logging.getLogger(__name__)  # the pre-flight's node threads have no Prefect run context
UPGRADE_IN_PROGRESS = 75  # the agent's answer while another upgrade of the node holds its lock


def _upgrade_once(agent: NodeAgent, version: str, timeout: float) -> RemoteResult:
    """Upgrade, or wait out an upgrade already running on the node (a crashed run's, which the node
    finishes on its own) and take its outcome. The agent's "already at" makes the retry safe."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            return agent.upgrade(version)
        except NodeCommandFailed as exc:
            if exc.result.exit_code != UPGRADE_IN_PROGRESS or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


class StepFailed(Exception):
    """A runbook step failed; the message names the node and the step."""


class StopRequested(Exception):
    """`upkeep pause|cancel` arrived while the pre-flight waited for a node to settle: the wait ended
    there, the node not judged. Not a failure: the caller honours the stop (the run's requested_action)."""


class TunnelDown(StepFailed):
    """Pre-flight found customer tunnels closed: only the customer can open them (`upkeep-agent tunnel
    start` on each node named); nothing was touched. `closed`: those nodes; `problems`: what else
    pre-flight found on the open ones (none: the closed tunnels are the only reason)."""

    def __init__(self, message: str, closed: tuple[str, ...] = (), problems: tuple[str, ...] = ()) -> None:
        super().__init__(message, tuple(closed), tuple(problems))  # in args: kept through pickling
        self.closed, self.problems = tuple(closed), tuple(problems)

    def __str__(self) -> str:
        return str(self.args[0])


class RunLost(StepFailed):
    """The run was taken over by another process before this one started a node's upgrade."""


class NodeConnections:
    """One open SSH connection per node, reused for all of that node's steps in a run. `opened`: when
    (UTC, this machine's wall clock) each node's connection was made, or an earlier moment; kept after
    `close` until the node's next connection, for `closed_under` to compare with the tunnel's age."""

    def __init__(self, runtime: Runtime, plan: UpdatePlan) -> None:
        self._runtime, self._plan = runtime, plan
        self._runners: dict[str, RemoteRunner] = {}
        self.opened: dict[str, datetime] = {}
        self._lock = Lock()

    def agent(self, node: PlannedNode) -> NodeAgent:
        with self._lock:
            runner = self._runners.get(node.hostname)
            if runner is None:
                self.opened[node.hostname] = datetime.now(UTC)  # before: the connection is made lazily
                runner = self._runners[node.hostname] = self._runtime.connect(self._plan.target(node))
        return NodeAgent(runner, command_timeout=self._runtime.command_timeout)

    def close(self) -> None:
        with self._lock:
            for runner in self._runners.values():
                runner.close()
            self._runners.clear()


@contextmanager
def untagged_steps() -> Iterator[None]:
    """Task runs started inside carry no tags, whatever the flow run's (customer:, cluster:, ...).

    At the start of every task run with tags, Prefect asks its API for a concurrency slot per tag,
    limit or no limit (PrefectHQ/prefect#19367). With the API unreachable past the client's retries,
    the next node's upgrade could not start and the run failed on a UI outage. The flow run keeps
    its tags, which is where the UI filters by them."""
    with TagsContext(current_tags=set()):
        yield


def _each_node(plan: UpdatePlan, work: Callable[[PlannedNode], str]) -> list[str]:
    """Run `work(node)` on every node in parallel (bounded); return the problems, in node order."""
    with ThreadPoolExecutor(max_workers=min(8, len(plan.nodes))) as pool:
        results = list(pool.map(work, plan.nodes))
    return [problem for problem in results if problem]


@task(name="download", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
def download(plan: UpdatePlan, run_id: int, runtime: Runtime) -> Path:
    dest = runtime.work_dir / "packages" / plan.package_name
    with recorded(runtime.engine, run_id, None, "download", detail=plan.package) as note:
        with _only_one_at_a_time(dest):
            path = runtime.fileserver.download(plan.package, dest, sha256=plan.sha256)
        note.output = f"{path} sha256={plan.sha256}"
    return path


@contextmanager
def _only_one_at_a_time(dest: Path) -> Iterator[None]:
    """Serialize downloads to `dest` on this machine (threads and processes alike). Runs started
    together by the dispatcher all want the same package: unserialized they wrote one `.part` file
    at once and renamed it from under each other (FileNotFoundError, or the checksum of an empty
    file), each costing a task retry 1 s later. Now one downloads; the others find it verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def preflight(
    plan: UpdatePlan, run_id: int, runtime: Runtime, conns: NodeConnections, package_size: int
) -> None:
    """The pre-flight step (`preflight_step`, a task run of the update's flow run); `StopRequested`
    when a pause/cancel ended its settle wait. That task run ends Cancelled ("Stopped", the stop in its
    message), not Failed: the run ends paused or cancelled, as asked, and the Prefect UI showed a red
    pre-flight in it, which an on-call engineer reads as a failure."""
    if isinstance(stopped := preflight_step(plan, run_id, runtime, conns, package_size), State):
        raise StopRequested(stopped.message or "pre-flight's wait ended by a pause/cancel")


@task(name="pre-flight", cache_policy=NO_CACHE)
def preflight_step(
    plan: UpdatePlan,
    run_id: int,
    runtime: Runtime,
    conns: NodeConnections,
    package_size: int,
    *,
    settle: bool = True,
) -> State | None:
    """Every node reachable, healthy, at a version this run expects, with disk for the package.

    On a resume, a node this run began upgrading and never verified (the stopped process's: killed,
    its machine lost) may still be finishing that upgrade or restarting after it: it gets the health
    wait its own health step would give it, not one look. Failing there told the customer their update
    failed, and paged, over an update that was going fine. `settle=False`: one look at every node (the
    dispatcher's reminder pre-flight, days before the window: a wait there held its whole tick)."""
    closed: list[str] = []
    settling = nodes_upgrading(runtime.engine, run_id) if settle else set()
    stopped: list[str] = []  # the nodes whose wait a pause/cancel ended

    def asked_to_stop() -> bool:  # between the settle wait's answers: a pause/cancel ends it now
        # A read that fails (the database away longer than inventory.db waits) is "not asked": the wait
        # goes on, as it did before it asked, and the stop is read again at its next answer and after
        # the pre-flight. Raised, it became the node's pre-flight problem and failed the run.
        try:
            return bool(stop_requested(runtime.engine, run_id))
        except Exception as exc:
            if not server_away(exc):
                raise
            log.warning("run %s: pause/cancel not read during the settle wait: %s", run_id, exc)
            return False

    def check(node: PlannedNode) -> str:
        try:
            with recorded(runtime.engine, run_id, node.id, "pre-flight") as note:
                agent = conns.agent(node)
                version = agent.version()
                if node.id in settling:
                    health = agent.wait_healthy(
                        timeout=runtime.health_timeout, interval=runtime.health_interval, stop=asked_to_stop
                    )
                    if not health.healthy and asked_to_stop():
                        note.output = f"version={version} health={health.detail}: wait ended by pause/cancel"
                        stopped.append(node.hostname)
                        return ""
                else:
                    health = agent.health()
                free = agent.disk_free()
                note.output = f"version={version} health={health.detail} disk_free={free}"
                if version not in (plan.from_version, plan.to_version):
                    raise StepFailed(f"at {version}, expected {plan.from_version}")
                if not health.healthy:
                    waited = f" after {runtime.health_timeout:g} s" if node.id in settling else ""
                    raise StepFailed(f"not healthy{waited} ({health.detail})")
                if free < 2 * package_size:
                    raise StepFailed(f"{free} bytes free, needs {2 * package_size} for the package")
        except TunnelClosed:
            closed.append(node.hostname)
            return ""
        except Exception as exc:
            return f"{node.hostname}: {exc}".replace(
                f"{node.hostname}: {node.hostname}: ", f"{node.hostname}: "
            )
        return ""

    problems = _each_node(plan, check)
    if stopped:  # the SRE's stop first: a node cut short mid-wait is not "not healthy", nor the run failed
        # Returned, not raised: the task run's state, which the Prefect UI shows (`preflight` raises).
        return Cancelled(
            name="Stopped",
            message=f"pre-flight's wait for {', '.join(sorted(stopped))} ended by a pause/cancel",
        )
    if not closed and not problems:
        return None
    where = (  # asked only on the way out: every pre-flight that passes, the reminders' too, skips it
        "resumed run's pre-flight failed, no further node touched"
        if nodes_touched(runtime.engine, run_id)
        else "pre-flight failed, no node touched"
    )
    if closed:
        assert plan.tunnel is not None
        names = sorted(closed)
        raise TunnelDown(
            f"{where}: the customer's support tunnel is closed on "
            f"{', '.join(names)} (tunnel server {plan.tunnel.host}:{plan.tunnel.port}); the customer must "
            f"run `upkeep-agent tunnel start` on {'that node' if len(names) == 1 else 'each of them'}, then "
            "ask for the update again" + "".join(f"; {problem}" for problem in problems),
            tuple(names),
            tuple(problems),
        )
    raise StepFailed(f"{where}: " + "; ".join(problems))


def reach(plan: UpdatePlan, conns: NodeConnections) -> None:
    """Every node answers (asked its version) through its connection; TunnelDown naming the nodes whose
    support tunnel is closed, StepFailed for any other node that does not answer. Touches nothing and
    records nothing: the look a run waiting for a tunnel closed mid-run repeats (pre-flight would also
    judge health, and a node that just finished its upgrade may still be starting)."""
    closed: list[str] = []

    def ask(node: PlannedNode) -> str:
        try:
            conns.agent(node).version()
        except TunnelClosed:
            closed.append(node.hostname)
        except Exception as exc:
            return f"{node.hostname}: {exc}".replace(
                f"{node.hostname}: {node.hostname}: ", f"{node.hostname}: "
            )
        return ""

    problems = _each_node(plan, ask)
    if closed:
        names = tuple(sorted(closed))
        # What else went wrong is said too: a look that also failed for another reason ends the wait
        # with this message as the run's reason, and must not read as the customer's tunnel alone.
        raise TunnelDown(
            f"the customer's support tunnel is closed on {', '.join(names)}"
            + "".join(f"; {problem}" for problem in problems),
            names,
            tuple(problems),
        )
    if problems:
        raise StepFailed("; ".join(problems))


def closed_under(
    plan: UpdatePlan, runtime: Runtime, failed: StepFailed, opened: dict[str, datetime] | None = None
) -> TunnelDown | None:
    """Whether a node's step failed because the customer closed the support tunnel under it, not
    because the node failed: the step lost its connection (what it did on the node is unknown) and,
    asked afresh, the tunnel server answers and says nothing listens on a node's forwarded port while
    every other node answers. The closed tunnels then, else None (a failure like any other).

    A tunnel closed and opened again before this look (`tunnel stop; tunnel start`, or the agent's ssh
    reconnecting) answers like one never closed: then the tunnel server's word decides - a node's tunnel
    that is newer than the connection the run had to it (`opened`) was closed under that connection."""
    cause = failed.__cause__
    if plan.tunnel is None or not isinstance(cause, RemoteError):
        return None
    if isinstance(cause, HostKeyError) or (isinstance(cause, CommandTimeout) and cause.stopped):
        return None  # the node answered: not the tunnel
    conns = NodeConnections(runtime, plan)  # fresh: the cut connection says nothing more
    try:
        reach(plan, conns)
    except TunnelDown as closed:
        return None if closed.problems else closed
    except StepFailed:  # the tunnel server away, a node not answering: not the customer's tunnel
        return None
    finally:
        conns.close()
    # Every tunnel answers: the cut node's was closed and opened again meanwhile, or the cut was not it.
    host = cause.host
    return _reopened(plan, runtime, {host: opened[host]} if opened and host in opened else {})


def _reopened(plan: UpdatePlan, runtime: Runtime, opened: dict[str, datetime]) -> TunnelDown | None:
    """Of the nodes in `opened`, those whose support tunnel the tunnel server says opened after the run's
    connection to the node was made (the sshd session holding its port is younger): that connection went
    through a tunnel that has closed since. None when none did, or the server cannot say (no reporter,
    unreachable).

    The tunnel server's clock against this machine's: both keep NTP time in service; the reporter gives
    whole seconds, so a tunnel opened within the second before the connection counts as newer, which
    only makes the run ask the node again (its step begins with the node's version) instead of failing."""
    settings = runtime.ssh
    if plan.tunnel is None or not isinstance(settings, SshSettings):
        return None
    server = plan.tunnel
    ports = {n.tunnel_port: n.hostname for n in plan.nodes if n.tunnel_port and n.hostname in opened}
    target = SshTarget(
        f"tunnel:{server.host}", server.host, server.port, server.user, host_key=server.host_key
    )
    try:
        probe = probe_tunnels(target, sorted(ports), settings)
    except RemoteError:
        return None
    newer = sorted(
        host
        for port, host in ports.items()
        if (since := probe.since.get(port)) is not None and since >= opened[host].replace(microsecond=0)
    )
    if not newer:
        return None
    return TunnelDown(
        f"the customer's support tunnel was closed and opened again on {', '.join(newer)}", tuple(newer)
    )


def staging_name(package_name: str, run_id: int) -> str:
    """The package's name while it is copied to a node: unique to the run and the process."""
    return f"{staging_prefix(package_name, run_id)}{os.getpid()}-{secrets.token_hex(3)}"


def staging_prefix(package_name: str, run_id: int) -> str:
    """How every name `staging_name` gives the package in this run begins."""
    return f"{package_name}.run{run_id}-"


KEPT = "the copy made earlier in this run, verified by its checksum on the node; not copied again"


@task(name="distribute", cache_policy=NO_CACHE)
def distribute(
    plan: UpdatePlan, run_id: int, runtime: Runtime, conns: NodeConnections, package: Path
) -> None:
    """Copy the package to every node and have each verify it, before any node is upgraded.

    A node that holds the copy this run made there in an earlier window (or an earlier process of the
    run: a resume, a take-over) is not copied to again once the node verifies that copy by its checksum
    (the agent's `stage`, which reads the whole file there): a package whose copy outlasted the room
    left in the window carried the run over, and the next window copied it again, found no room again,
    and so on every window, the customer told 'rescheduled' each time. A copy the node no longer holds,
    or whose checksum no longer matches, is made again."""

    # A name of this run and process on the node: two processes copying at once (a scheduler bug,
    # or a lost race that went on anyway) can never write into each other's file.
    staging = staging_name(plan.package_name, run_id)
    earlier = copies_staged(runtime.engine, run_id, staging_prefix(plan.package_name, run_id))

    errors: list[Exception] = []

    def send(node: PlannedNode) -> str:
        try:
            with recorded(runtime.engine, run_id, node.id, "distribute", detail=staging) as note:
                agent = conns.agent(node)
                why_again = ""
                if (made := earlier.get(node.id or 0)) is not None:
                    try:
                        kept = agent.stage(made, plan.sha256).tail()
                    # Not there any more, or not the package; or a name the agent's vocabulary refuses
                    # (the record is only where to look): copied again. A lost connection raises.
                    except (NodeCommandFailed, ValueError) as gone:
                        said = gone.result.tail(1) if isinstance(gone, NodeCommandFailed) else str(gone)
                        why_again = f"the earlier copy {made!r} is not usable ({said}); copied again: "
                    else:
                        note.detail = made
                        note.output = f"{kept}: {KEPT}"
                        return ""
                agent.runner.put(package, staging)
                note.output = why_again + agent.stage(staging, plan.sha256).tail()
        except Exception as exc:
            errors.append(exc)
            return str(exc)
        return ""

    problems = _each_node(plan, send)
    if problems:
        # Every node that failed lost its connection: that is the cause (closed_under asks whether a
        # support tunnel closed under it); any other failure among them is the step's own.
        lost = [exc for exc in errors if isinstance(exc, RemoteError)]
        cause = lost[0] if len(lost) == len(errors) else None
        raise StepFailed("distribute failed, no node upgraded: " + "; ".join(problems)) from cause


@task(name="upgrade-node", task_run_name="upgrade {node.hostname}", cache_policy=NO_CACHE)
def upgrade_node(
    plan: UpdatePlan,
    run_id: int,
    runtime: Runtime,
    conns: NodeConnections,
    node: PlannedNode,
    still_ours: Callable[[], bool] | None = None,
) -> str:
    """Upgrade one node: ask its version first (a resumed run may find it done), upgrade, wait for
    health, verify. Returns what happened. `still_ours` is asked right before the upgrade command:
    a process frozen since the flow last asked (SIGSTOP, a paused VM) and taken over meanwhile
    leaves the node to the new owner instead of upgrading it too."""
    agent = conns.agent(node)
    engine = runtime.engine
    try:
        with recorded(engine, run_id, node.id, "check") as note:
            before = agent.version()
            note.output = before
        if before != plan.to_version:
            if before != plan.from_version:
                raise StepFailed(f"at {before}, expected {plan.from_version}")
            if still_ours is not None and not still_ours():
                raise RunLost(f"run {run_id} was taken over by another process; upgrade not started")
            with recorded(engine, run_id, node.id, "upgrade", detail=plan.to_version) as note:
                failpoint_soon(f"mid-upgrade:{node.position}", 0.3)
                note.output = _upgrade_once(agent, plan.to_version, runtime.command_timeout).tail()
        with recorded(engine, run_id, node.id, "health") as note:
            failpoint_soon(f"mid-health:{node.position}", 0.2)
            health = agent.wait_healthy(timeout=runtime.health_timeout, interval=runtime.health_interval)
            note.output = health.detail
            if not health.healthy:
                raise StepFailed(f"not healthy after {runtime.health_timeout:g} s ({health.detail})")
        with recorded(engine, run_id, node.id, "verify", detail=plan.to_version) as note:
            after = agent.version()
            note.output = after
            if after != plan.to_version:
                raise StepFailed(f"reports {after} after the upgrade, expected {plan.to_version}")
    except Exception as exc:
        message = str(exc)
        prefix = f"{node.hostname}: "
        raise StepFailed(message if message.startswith(prefix) else prefix + message) from exc
    return "already at target" if before == plan.to_version else f"{before}→{after}"
