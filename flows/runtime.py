"""What a flow needs from the outside world, handed in by whoever starts it.

Flows never read settings or build adapters themselves: the CLI, the Prefect entrypoints and the tests
configure a `Runtime` factory (the composition root lives in `upkeep/`). The factory runs lazily, on
the first `current()` inside a flow, so importing a flow module builds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.engine import Engine

from inventory.types import utcnow

if TYPE_CHECKING:  # the protocols only: a command that never reaches a node imports no adapter
    from tasks.alerts import AlertChannel
    from tasks.fileserver import FileServer
    from tasks.mail import MailTransport
    from tasks.ssh import NodeConnector, RemoteRunner, SshTarget


class Clock(Protocol):
    """The wall clock: an aware UTC datetime per call (`inventory.types.utcnow`; a fake in tests)."""

    def __call__(self) -> datetime: ...


@dataclass
class Runtime:
    """The outside world of a flow, each part behind a protocol: the database, the file server
    (`FileServer`), the nodes (`NodeConnector`: `SshSettings` opens Fabric connections), mail
    (`MailTransport`) and the clock (`Clock`). Unit tests hand in fakes (tests/support/fakes.py)."""

    engine: Engine
    fileserver: FileServer
    ssh: NodeConnector
    work_dir: Path
    mailer: MailTransport
    mail_from: str = "Upkeep <upkeep@localhost>"
    sre_email: str = "sre@localhost"
    # Where SRE alerts go (flows/alerts.py): the SRE mailbox and every UPKEEP_ALERT_URLS entry.
    alert_channels: tuple[AlertChannel, ...] = ()
    # An on-call page not acknowledged within this goes one level up the chain (flows/oncall.py).
    oncall_escalate_after: timedelta = timedelta(minutes=15)
    support_contact: str = "support@localhost"
    # The customer portal's address (UPKEEP_PORTAL_URL): notices link designated users to it.
    portal_url: str = ""
    # Reads the portal key (UPKEEP_PORTAL_SECRET or <home>/portal.key) that signs those links.
    portal_key: Callable[[], bytes] | None = field(default=None, repr=False)
    per_node_estimate: timedelta = timedelta(minutes=10)
    # At a window's start, how long a run waits for a customer's closed support tunnel (bounded by the
    # window: one node must still fit) before it carries over to the next window; 0: no waiting.
    tunnel_wait: timedelta = timedelta(0)
    tunnel_poll: float = 15.0  # seconds between looks at the closed tunnels while waiting
    # Name of a Prefect global concurrency limit every cluster's upgrade occupies one slot of
    # (`prefect gcl create upkeep-clusters --limit 10`); empty: no limit beyond the dispatcher's.
    cluster_limit: str = ""
    # Seconds the CLI's pre-checks wait for the Prefect API's whole answer (flows/prefect_api.py).
    prefect_answer_seconds: float = 10.0
    # Seconds between a waiting run's asks for a slot of that limit, each after a look at its pending
    # `upkeep pause|cancel`: how soon a stop ends the wait, and one API request per waiting run each time.
    slot_poll: float = 5.0
    # The wall clock, injectable so a test can make a window run out without waiting for it.
    clock: Clock = field(default=utcnow)
    command_timeout: float = 600.0
    health_timeout: float = 120.0
    health_interval: float = 0.1
    approval_timeout: float = 7 * 24 * 3600.0
    # A running run's lease (flows/lease.py): renewed every tenth of it while its process lives; once
    # it runs out the dispatcher takes the run over. start_lease covers a run handed to a deployment
    # until a worker starts its flow (the worker's poll, a process start, a queue).
    run_lease: timedelta = timedelta(minutes=5)
    start_lease: timedelta = timedelta(minutes=10)
    actor: str = "upkeep"
    # Told (node, step, state, note) as a flow that records no steps of ours goes (diagnostics
    # collection), for the CLI's live view (upkeep/progress.py); None: nobody is watching.
    progress: Callable[[str, str, str, str], None] | None = field(default=None, repr=False)
    # The Escalation Manager (SRE Manager role) every escalated case is assigned to, "Name <email>",
    # and how often an escalated case's stakeholders get an update, per priority (flows/escalation.py).
    escalation_manager: str = "SRE Manager <sre-manager@localhost>"
    escalation_update_cadence: str = "P0=1h,P1=4h,P2=24h,P3=72h"

    def tell(self, node: str, step: str, state: str, note: str = "") -> None:
        """Tell `progress`, if set; a watcher that fails never fails the flow."""
        if self.progress is not None:
            with suppress(Exception):  # a view, not the work
                self.progress(node, step, state, note)

    def connect(self, target: SshTarget) -> RemoteRunner:
        return self.ssh.connect(target)


@dataclass
class _Holder:
    factory: Callable[[], Runtime] | None = None
    runtime: Runtime | None = None
    lock: Lock = field(default_factory=Lock)


_holder = _Holder()


class RuntimeNotConfigured(RuntimeError):
    pass


def configure(factory: Callable[[], Runtime] | Runtime | None) -> None:
    """Set what `current()` returns: a Runtime, a factory for one (built on first use), or None."""
    with _holder.lock:
        if isinstance(factory, Runtime):
            _holder.factory, _holder.runtime = None, factory
        else:
            _holder.factory, _holder.runtime = factory, None


def current() -> Runtime:
    with _holder.lock:
        if _holder.runtime is None:
            if _holder.factory is None:
                raise RuntimeNotConfigured(
                    "no Upkeep runtime configured: start flows with the `upkeep` CLI or the "
                    "entrypoints in upkeep/entrypoints.py"
                )
            _holder.runtime = _holder.factory()
        return _holder.runtime
