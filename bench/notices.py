"""Notices benchmark: N customer notices rendered, queued and delivered to a real local SMTP server.

    .venv/bin/python bench/notices.py [-n 10000] [--batch 500] [--profile OUT.txt]

The product path, end to end, on a fresh SQLite database (the single-machine default): each notice
is a `scheduled` notice (plain text + HTML from the Jinja templates, and an iCalendar invite)
rendered and queued by
`flows.notify.queue_for` - batches of `--batch` notices per transaction, as a bulk announcement would -
then delivered from the outbox by `flows.notify.deliver_pending` through `tasks.mail.SmtpTransport`
(one SMTP connection for the call, one transaction per message, as in production) to an aiosmtpd server on
127.0.0.1 - a process of its own, so it does not take this one's GIL - that counts what it accepts.
Checked at the end: N messages accepted, N rows sent.
With `--profile`, pyinstrument samples the run (main thread) and writes a text report.

Last line: `notices n=N seconds=S` (S: rendering + queuing + delivery; start-up excluded). The line
before also gives this process's CPU seconds: on a shared machine wall time includes waiting for a core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from aiosmtpd.controller import Controller

from flows.notify import deliver_pending, queue_for
from inventory.db import make_engine, migrate, session_scope
from inventory.models import Customer
from inventory.outbox import Notice, NoticeState
from tasks.mail import SmtpTransport
from templates import NoticeContext, NoticeKind
from upkeep.lab.procs import LOCALHOST, free_ports

CUSTOMERS = (("acme", "America/New_York"), ("globex", "Europe/Berlin"), ("initech", "Asia/Kolkata"))


class Counting:
    """aiosmtpd handler: accepts every message and counts it (and its size)."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages += 1
        self.bytes += len(envelope.content)
        return "250 OK"


def context(i: int, customer: str, zone: str, now: datetime) -> NoticeContext:
    start = (now + timedelta(days=3, hours=i % 48)).replace(minute=0, second=0, microsecond=0)
    return NoticeContext(
        kind=NoticeKind.scheduled,
        update_ref=f"update-{i}",
        sequence=1,
        customer=customer,
        customer_timezone=zone,
        cluster=f"{customer}-c{i}",
        from_version="9.8.0",
        to_version="9.10.0",
        slot_start=start,
        slot_end=start + timedelta(hours=4),
        recipients=(f"ops@{customer}.example", f"oncall@{customer}.example"),
        organizer="upkeep@vendor.example",
        support_contact="support@vendor.example",
        defer_instructions="Reply to this email or ask your support contact.",
        deferral_limits="up to 2 deferrals, each by at most 7 days",
    )


def smtp_server(port: int) -> None:
    """Run the counting SMTP server until SIGTERM, then print what it accepted as JSON."""
    handler = Counting()
    controller = Controller(handler, hostname=LOCALHOST, port=port)
    controller.start()
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        controller.stop()
    print(json.dumps({"messages": handler.messages, "bytes": handler.bytes}), flush=True)


def _wait_for_port(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the SMTP server exited")
        with contextlib.suppress(OSError), socket.create_connection((LOCALHOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the SMTP server did not listen on {port}")


def main() -> None:
    if sys.argv[1:2] == ["--smtp-server"]:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        smtp_server(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="upkeep-notices-"))
    engine = make_engine(f"sqlite:///{work / 'upkeep.db'}")
    migrate(engine)
    with session_scope(engine) as session:
        customers = []
        for name, zone in CUSTOMERS:
            row = Customer(name=name, timezone=zone)
            session.add(row)
            session.flush()
            customers.append((row.id, name, zone))
    port = free_ports(1)[0]
    server = subprocess.Popen(
        [sys.executable, __file__, "--smtp-server", str(port)], stdout=subprocess.PIPE, text=True
    )
    _wait_for_port(port, server)
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    try:
        now = datetime.now(UTC)
        started = time.monotonic()
        cpu_started = time.process_time()
        for first in range(0, args.n, args.batch):
            with session_scope(engine) as session:
                for i in range(first, min(first + args.batch, args.n)):
                    customer_id, name, zone = customers[i % len(customers)]
                    ctx = context(i, name, zone, now)
                    queue_for(ctx, customer_id=customer_id, session=session, stamp=now)
        queued = time.monotonic() - started
        report = deliver_pending(
            engine,
            SmtpTransport(host=LOCALHOST, port=port, timeout=15),
            now=datetime.now(UTC),
            sender="Upkeep <upkeep@vendor.example>",
            limit=args.n,
        )
        seconds = time.monotonic() - started
        cpu = time.process_time() - cpu_started
    finally:
        if profiler is not None:
            profiler.stop()
            args.profile.write_text(profiler.output_text(unicode=True, color=False))
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    accepted = json.loads(out.strip().splitlines()[-1])
    with session_scope(engine) as session:
        from sqlmodel import func, select

        sent = session.exec(select(func.count()).where(Notice.state == NoticeState.sent)).one()
    engine.dispose()
    shutil.rmtree(work, ignore_errors=True)  # the database: ~40 MB at n=10,000
    ok = accepted["messages"] == args.n and sent == args.n and len(report.sent) == args.n
    delivered = seconds - queued
    print(
        f"rendered+queued {args.n} in {queued:.1f} s ({1000 * queued / args.n:.2f} ms each); "
        f"delivered {len(report.sent)} in {delivered:.1f} s ({1000 * delivered / args.n:.2f} ms "
        f"each, one SMTP connection); SMTP server accepted {accepted['messages']} messages, "
        f"{accepted['bytes'] / max(accepted['messages'], 1) / 1024:.1f} KiB each; rows sent {sent}"
        + f"; this process's CPU {cpu:.1f} s"
        + ("" if ok else "  MISMATCH")
    )
    print(f"notices n={args.n} seconds={seconds:.1f}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
