"""Leases on running runs: who is carrying a run out, and until when without a renewal.

Whoever moves a run to `running` writes a lease: an owner (`host:pid@birth/random`, new for every
claim: `new_owner`) and an expiry. The process carrying the run out renews it from a daemon thread
every tenth of the lease, whatever the flow is doing at the time (a 600 s SSH command, a health wait,
the approval gate, a cluster slot), and clears it when the flow ends with the run no longer
`running` (succeeded, failed, cancelled, paused, carried over). So a lease runs out only when its
process is gone (killed, its machine lost), has not run for a whole lease (frozen, or the database
unreachable that long), or ended without being able to record how. The dispatcher then takes the
run over (`take_over`): one conditional UPDATE on the old owner and the expired lease, so two
dispatchers never both take one, and it resumes the run the way `upkeep resume RUN` does (nodes asked
their real version, done nodes skipped).

Every time comes from `runtime.clock`, the dispatcher's own clock, so a test with a fixed clock sees
the same expiries as the dispatcher it runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from flows.runtime import Runtime
from inventory.models import AuditEvent, RunState, UpgradeRun
from inventory.runs import of_known_kind

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """The run is held by another owner whose lease has not run out (or it was taken from us)."""


class NotResumable(RuntimeError):
    """The run is no longer planned, running or paused: there is nothing left to carry out."""


def holder_label(owner: str | None) -> str:
    """`host:pid` of an owner (`host:pid@birth/random`, or `host:pid/random` as written before the
    birth was recorded): what an operator can look for. Fit for one line of a terminal: an owner is a
    database column, its host the kernel's host name (any bytes root set), so control characters (an
    escape sequence, a newline) come out as \\x1b, \\n."""
    head = (owner or "nobody").split("/", 1)[0]
    host, colon, rest = head.partition(":")
    return printable(f"{host}:{rest.split('@', 1)[0]}" if colon else head)


def printable(text: str) -> str:
    """`text` with its control characters escaped (as upkeep.settings.printable does for the CLI's
    own lines)."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in text)


def held_message(
    run_id: int, owner: str | None, since: datetime | None, until: datetime | None = None
) -> str:
    """The one line a process that lost the run prints. A holder whose life cannot be told from here
    (`unseen_here`, `held_elsewhere`: after a reboot of this machine, surely gone) is taken over only
    once its lease runs out: when that is (`until`), so the SRE need not work it out."""
    when = f" since {since:%H:%M:%S}" if since else ""
    runs_out = f" at {until:%Y-%m-%d %H:%M:%S} UTC unless its process renews it" if until else ""
    then = f"it can be taken over once its lease runs out{runs_out}"
    if unseen_here(owner):
        where = f" ({UNSEEN}; {then})"
    elif held_elsewhere(owner) and until:
        where = f" (on another machine; {then})"
    else:
        where = ""
    return f"run {run_id} is being carried out by {holder_label(owner)}{where}{when}; `upkeep show {run_id}`"


# What an operator is told of a holder `unseen_here`: why its `host:pid` is not to be found here.
UNSEEN = (
    "it runs where its process cannot be seen from here: another container with this host name, "
    "or this machine before a reboot"
)


def holder_gone(owner: str | None) -> bool:
    """True only when the owner's process is known to be gone: it ran on this host and no process
    has its pid any more (a kill -9, a crash), or only its zombie does (dead, its parent - a shell, a
    supervisor - not having collected its status yet: `ps` shows it <defunct>, and its pid cannot be
    given to another process until then), or the process that has its pid now is another one than the
    owner's (the owner was killed long ago and its pid given to an unrelated process since: kill(2)
    finds that one, and a stop at a dead gate was promised "within seconds"). An owner elsewhere, or
    one that cannot be read, is taken as alive: only its lease running out says otherwise.

    "Another process" is told by the birth the owner recorded (`new_owner`): its start time in clock
    ticks since boot (/proc/PID/stat), in a pid space named by the boot and the pid and time
    namespaces. A pid whose process started at another tick of the same boot, seen from the same
    namespaces, is not the owner's process: pids are unique among live processes and a process's
    start never changes. No clock is read: not `runtime.clock` (a test's fixed time, even one in the
    past, would make a live holder read as started after its own lease: `lease_since` is no sound
    yardstick), not the wall clock (a step of it moves /proc/stat's btime, and with it any start time
    turned into a date).

    An owner whose birth is from another space than ours - a pod's other container (same host name,
    its own pids: its pid 7 is not ours, and may be free here while it lives), another boot, or a
    birth that cannot be read (or this process cannot read its own /proc) - cannot be told from here:
    alive, like a holder on another host (`held_elsewhere`), until its lease runs out (`unseen_here`
    says so to the operator). The cost, accepted: after a reboot of this machine, a run whose process
    the reboot ended is taken over only once its lease runs out, not at once. Only an owner written
    before births were recorded (`host:pid/random`, no `@`) keeps the older rule: kill(2) and the
    zombie check alone (the pid-namespace blind spot included: nothing in it says where it ran)."""
    host, pid, written, birth = _parse(owner)
    if host != socket.gethostname() or pid is None:
        return False
    if written:
        if birth is None or birth[1] != _space():
            return False  # cannot be told from here: its lease says
        now_there = _start_ticks(pid)
        if now_there is not None and now_there != birth[0]:
            return True  # the pid is another process's now
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        return False
    return _zombie(pid)


def same_process(owner: str | None, other: str | None) -> bool:
    """Whether two owners were written by one process: the same `host:pid@birth` (the random part
    tells its claims apart, not processes). Where either has no birth (written before births were
    recorded, or where /proc could not be read), `host:pid` alone, as before: one pid in two pid
    namespaces with one host name (a pod's containers, pid 1 in each) then reads as one process."""
    heads = [(text or "").split("/", 1)[0] for text in (owner, other)]
    if all("@" in head for head in heads):
        return heads[0] == heads[1]
    return holder_label(owner) == holder_label(other)


def unseen_here(owner: str | None) -> bool:
    """Whether the owner ran on this host name but where its process cannot be seen from here (its
    birth is from another pid or time namespace or boot, or cannot be read: `holder_gone`): whether it
    lives is told only by its lease running out, as for `held_elsewhere`."""
    host, _, written, birth = _parse(owner)
    return bool(host) and host == socket.gethostname() and written and (birth is None or birth[1] != _space())


_PID_MAX = 2**31 - 1  # pid_t: a larger number is no process's (os.kill would overflow on it)
_TICKS_DIGITS = 20  # an unsigned 64-bit count of clock ticks


def _parse(owner: str | None) -> tuple[str, int | None, bool, tuple[int, str] | None]:
    """(host, pid, whether a birth was written, (start ticks, space) or None) of
    `host:pid[@ticks.space]/random`; pid None when the owner is not of that form (a test's "claim", a
    number no pid can be), the birth None when absent or unreadable. Digits are ASCII ones only, and
    few enough for int() (a hand-written owner may hold anything: '١٢٣', 5000 digits)."""
    host, _, rest = (owner or "").partition(":")
    pid_text, at, birth_text = rest.split("/", 1)[0].partition("@")
    pid = int(pid_text) if _digits(pid_text, 10) and int(pid_text) <= _PID_MAX else None
    ticks, dot, space = birth_text.partition(".")
    birth = (int(ticks), space) if _digits(ticks, _TICKS_DIGITS) and dot and space else None
    return host, pid, bool(at), birth


def _digits(text: str, most: int) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= most


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/PID/stat's fields from the third (state) on, or None when unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
    return stat[stat.rfind(b")") + 2 :].split()


def _start_ticks(pid: int | str) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot (as seen from
    this process's time namespace); None when unreadable (not Linux, gone, hidden)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20 or not fields[19].isdigit():
        return None
    return int(fields[19])


def _space() -> str | None:
    """Names where a pid and its start ticks mean one process: this boot, and this process's pid and
    time namespaces - as /proc shows them to this process (a /proc of another pid namespace, mounted
    here, shows other pids: None then, as when any of it cannot be read)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
        own = Path("/proc/self/stat").read_bytes().split(b" ", 1)[0]
    except OSError:
        return None
    if not boot or own != str(os.getpid()).encode():
        return None
    try:
        time_ns = str(os.stat("/proc/self/ns/time").st_ino)
    except OSError:  # a kernel before time namespaces (5.6): one clock for all
        time_ns = "-"
    return hashlib.sha256(f"{boot} {pid_ns} {time_ns}".encode()).hexdigest()[:12]


def held_elsewhere(owner: str | None) -> bool:
    """Whether the owner's process runs on another host: whether it lives cannot be told from here,
    only by its lease running out."""
    host = (owner or "").partition(":")[0]
    return bool(host) and host != socket.gethostname()


def _zombie(pid: int) -> bool:
    """Whether `pid` is a process that has ended but not been collected (Linux's /proc; elsewhere, or
    unreadable: False, alive). Every thread of it, not only the first: /proc/PID/stat is the main
    thread's, which reads Z once it alone has ended while the process's other threads run on."""
    try:
        stats = [task.joinpath("stat").read_bytes() for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
    return bool(stats) and all(
        stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X") for stat in stats
    )


def expired(lease_until: datetime | None, now: datetime) -> bool:
    """The orphan rule for a `running` run. No lease at all is never expired: nothing says the run
    was abandoned (it is counted as running and left to `upkeep resume`)."""
    return lease_until is not None and lease_until <= now


def renew_every(lease: timedelta) -> float:
    """Seconds between renewals: ten chances to renew before the lease runs out."""
    return lease.total_seconds() / 10


def new_owner() -> str:
    """`host:pid@ticks.space/random`: the random part tells two claims of one process apart (a
    dispatcher hands out several); the birth (`ticks.space`, see `holder_gone`) tells this process
    from a later one given its pid. Read anew at every call, never cached: a forked child has its own
    pid and start. Where it cannot be read (not Linux, /proc hidden): `host:pid/random`, as before."""
    pid, space = os.getpid(), _space()
    ticks = _start_ticks("self") if space is not None else None
    birth = f"@{ticks}.{space}" if ticks is not None else ""
    return f"{socket.gethostname()}:{pid}{birth}/{secrets.token_hex(3)}"


def _orphaned(now: datetime) -> list[ColumnElement[bool]]:
    """`expired` in SQL, for a running run."""
    return [
        col(UpgradeRun.state) == RunState.running,
        col(UpgradeRun.lease_until).is_not(None),
        col(UpgradeRun.lease_until) <= now,
    ]


def count_live(session: Session, now: datetime) -> int:
    """Runs `running` under a live lease (or none): what counts against the dispatcher's limit."""
    live = or_(col(UpgradeRun.lease_until).is_(None), col(UpgradeRun.lease_until) > now)
    return session.exec(select(func.count()).where(UpgradeRun.state == RunState.running, live)).one()


def orphans(session: Session, now: datetime, *, skip: set[int], limit: int = 50) -> list[UpgradeRun]:
    """Running runs whose lease ran out, the longest-abandoned first."""
    query = (
        select(UpgradeRun)
        .where(*_orphaned(now), of_known_kind())  # another version's run is that version's to resume
        .order_by(col(UpgradeRun.lease_until), col(UpgradeRun.id))
        .limit(limit + len(skip))
    )
    return [run for run in session.exec(query).all() if run.id not in skip][:limit]


def take_over(
    session: Session,
    run: UpgradeRun,
    *,
    now: datetime,
    owner: str,
    until: datetime,
    actor: str,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
) -> bool:
    """Take an orphaned run for `owner`; False when another dispatcher took it first or its owner
    renewed after all. Audited with the old owner and when its lease ran out."""
    won = session.execute(
        update(UpgradeRun)
        .where(
            col(UpgradeRun.id) == run.id,
            col(UpgradeRun.lease_owner) == run.lease_owner,
            *_orphaned(now),
        )
        .values(lease_owner=owner, lease_until=until, lease_since=now)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return False
    assert run.lease_until is not None
    detail = {"previous_owner": run.lease_owner, "lease_ran_out": run.lease_until.isoformat(), "owner": owner}
    session.add(AuditEvent(actor=actor, action="run.taken_over", subject=f"run/{run.id}", detail=detail))
    log.warning(
        "run %s: lease of %s ran out at %s; taken over by %s and resumed",
        run.id,
        run.lease_owner,
        run.lease_until.isoformat(),
        owner,
    )
    return True


def held_live(run: UpgradeRun, now: datetime) -> str:
    """`held_message` when a live holder carries `run` out (its lease not run out, its process not known
    gone), which `claim` refuses; "" otherwise.
    A read: `upkeep resume` says it before asking anything else."""
    held_by = run.lease_owner
    if held_by and not expired(run.lease_until, now) and not holder_gone(held_by):
        return held_message(run.id or 0, held_by, run.lease_since, run.lease_until)
    return ""


def claim(session: Session, run_id: int, *, now: datetime, lease: timedelta, actor: str) -> str:
    """Take `run_id` for this process (`upkeep resume`, `upkeep update`): one compare-and-set on
    the lease as it was read, so of several processes taking one run at once exactly one wins; the
    others get `LeaseHeld` naming the winner. A live holder is never displaced; a holder whose lease
    ran out, or whose process on this host is gone (a kill -9), is. Clears a pause or cancel asked
    earlier: a resume is an SRE's explicit word. Returns the new owner."""
    run = session.get(UpgradeRun, run_id)
    if run is None:
        raise LookupError(f"no update {run_id} (see `upkeep runs`)")
    if not RunState(run.state).active:
        raise NotResumable(_finished(run))
    held_by = run.lease_owner
    if live := held_live(run, now):
        raise LeaseHeld(live)
    owner = new_owner()
    won = session.execute(
        update(UpgradeRun)
        .where(col(UpgradeRun.id) == run_id, col(UpgradeRun.state).in_(_ACTIVE), _held_by(held_by))
        .values(lease_owner=owner, lease_until=now + lease, lease_since=now, requested_action="")
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        session.expire(run)
        fresh = session.get(UpgradeRun, run_id)
        assert fresh is not None
        if not RunState(fresh.state).active:
            raise NotResumable(_finished(fresh))
        raise LeaseHeld(held_message(run_id, fresh.lease_owner, fresh.lease_since, fresh.lease_until))
    if held_by:
        detail = {"previous_owner": held_by, "owner": owner, "lease_until": str(run.lease_until)}
        _audit_taken(session, run_id, detail, actor)
    return owner


def _held_by(owner: str | None) -> ColumnElement[bool]:
    """The compare of a compare-and-set: the lease is still held as it was read."""
    return col(UpgradeRun.lease_owner).is_(None) if owner is None else col(UpgradeRun.lease_owner) == owner


def _audit_taken(session: Session, run_id: int, detail: dict[str, str], actor: str) -> None:
    session.add(AuditEvent(actor=actor, action="run.lease_taken", subject=f"run/{run_id}", detail=detail))


_ACTIVE = (RunState.planned, RunState.running, RunState.paused)


def _finished(run: UpgradeRun) -> str:
    when = f" at {run.finished_at:%H:%M:%S}" if run.finished_at else ""
    return f"run {run.id} already {run.state}{when}: nothing to resume; `upkeep show {run.id}`"


def acquire(session: Session, run: UpgradeRun, runtime: Runtime, *, expected: str | None, actor: str) -> str:
    """The flow's own lease on `run`, in the caller's transaction; returns its owner.

    `expected`: the owner the flow was started under (the dispatcher's or the CLI's claim). The flow
    then goes on only if the run is still held under it, or by nobody live: a deployment run that
    starts after its claim ran out and the run was taken over must not carry it out a second time.
    None (a deployment run started by hand, a test): taken only from nobody, a lapsed lease or a
    holder known to be gone, by a compare-and-set on the holder read; a live holder wins."""
    now, owner = runtime.clock(), new_owner()
    until = now + runtime.run_lease
    if run.id is not None and expected is None:
        held_by = run.lease_owner
        if held_by and not expired(run.lease_until, now) and not holder_gone(held_by):
            raise LeaseHeld(held_message(run.id, held_by, run.lease_since, run.lease_until))
        won = session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run.id, _held_by(held_by))
            .values(lease_owner=owner, lease_until=until, lease_since=now)
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            now_held = select(UpgradeRun.lease_owner, UpgradeRun.lease_since, UpgradeRun.lease_until)
            raise LeaseHeld(
                held_message(run.id, *session.exec(now_held.where(UpgradeRun.id == run.id)).one())
            )
        if held_by:
            _audit_taken(session, run.id, {"previous_owner": held_by, "owner": owner}, actor)
    elif run.id is not None:
        won = session.execute(
            update(UpgradeRun)
            .where(
                col(UpgradeRun.id) == run.id,
                or_(
                    col(UpgradeRun.lease_owner).is_(None),
                    col(UpgradeRun.lease_owner) == expected,
                    col(UpgradeRun.lease_until) <= now,
                ),
            )
            .values(lease_owner=owner, lease_until=until, lease_since=now)
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            holder = select(UpgradeRun.lease_owner, UpgradeRun.lease_until).where(UpgradeRun.id == run.id)
            held_by, held_until = session.exec(holder).one()
            raise LeaseHeld(
                f"run {run.id} is held by {printable(held_by or '')} until {held_until}, not by {expected}: "
                "it was taken over; this flow leaves it alone"
            )
    run.lease_owner, run.lease_until, run.lease_since = owner, until, now
    return owner


def release(engine: Engine, run_id: int, owner: str) -> None:
    """Give back a claim no flow went on with (it could not start): only if it is still `owner`'s."""
    with engine.begin() as conn:
        conn.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id, col(UpgradeRun.lease_owner) == owner)
            .values(lease_owner=None, lease_until=None, lease_since=None)
        )


def ensure_held(session: Session, run_id: int, owner: str) -> None:
    """Inside the transaction that records how a run ended: raise `LeaseHeld` unless `owner` still
    holds it. The row is locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes), so no one
    takes it between this check and the write: only the holder fails a run, opens its case or tells
    the customer."""
    query = (
        select(UpgradeRun.lease_owner, UpgradeRun.lease_since, UpgradeRun.lease_until)
        .where(col(UpgradeRun.id) == run_id)
        .with_for_update()
    )
    held_by, since, until = session.exec(query).one()
    if held_by != owner:
        raise LeaseHeld(held_message(run_id, held_by, since, until))


class Heartbeat:
    """Renews one run's lease from a daemon thread while the flow carrying it out lives."""

    def __init__(self, runtime: Runtime, run_id: int, owner: str) -> None:
        self.runtime, self.run_id, self.owner = runtime, run_id, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-run-{run_id}", daemon=True)

    def _mine(self) -> list[ColumnElement[bool]]:
        return [col(UpgradeRun.id) == self.run_id, col(UpgradeRun.lease_owner) == self.owner]

    def _beat(self) -> None:
        while not self._stop.wait(renew_every(self.runtime.run_lease)):
            try:
                with self.runtime.engine.begin() as conn:
                    until = self.runtime.clock() + self.runtime.run_lease
                    renewed = conn.execute(update(UpgradeRun).where(*self._mine()).values(lease_until=until))
            except Exception as exc:  # the database may be back before the lease runs out: keep trying
                log.warning("run %s: lease not renewed (%s); trying again", self.run_id, exc)
                continue
            if renewed.rowcount != 1:
                log.error("run %s: lease lost (taken over or cleared); no longer renewing it", self.run_id)
                return

    def held(self) -> bool:
        """Still ours? Asked before each node so a run taken over while this process was frozen is
        left to its new owner."""
        with self.runtime.engine.connect() as conn:
            owner = conn.execute(select(UpgradeRun.lease_owner).where(UpgradeRun.id == self.run_id)).scalar()
        return owner == self.owner

    def start(self) -> None:
        self._thread.start()

    def stop_and_clear(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        # A run the flow left `running` (it could not even record its failure, e.g. the database was
        # down) keeps its owner for the record, but its lease runs out now: nobody carries it out any
        # more, so `upkeep resume` (even from this same process) or the dispatcher's next take-over
        # goes on at once instead of waiting out a lease nobody renews.
        ended = col(UpgradeRun.state) != RunState.running
        try:
            with self.runtime.engine.begin() as conn:
                cleared = {"lease_owner": None, "lease_until": None, "lease_since": None}
                conn.execute(update(UpgradeRun).where(*self._mine(), ended).values(**cleared))
                left = col(UpgradeRun.state) == RunState.running
                conn.execute(
                    update(UpgradeRun).where(*self._mine(), left).values(lease_until=self.runtime.clock())
                )
        except Exception as exc:  # never hides how the flow ended; a run that ended is never an orphan
            log.warning("run %s: lease not cleared (%s)", self.run_id, exc)


@contextmanager
def hold(runtime: Runtime, run_id: int, owner: str) -> Iterator[Heartbeat]:
    """The lease renewed for as long as the block runs, and cleared when it ends with the run no
    longer `running` (a kill -9 skips this: that is how a crash leaves an orphan behind)."""
    beat = Heartbeat(runtime, run_id, owner)
    beat.start()
    try:
        yield beat
    finally:
        beat.stop_and_clear()
