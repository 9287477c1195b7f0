"""The daily case auto-close flow: cases that waited on the customer too long are closed."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger

from flows.runtime import current
from inventory import cases
from inventory.db import session_scope
from inventory.types import utcnow


@flow(name="case-auto-close", flow_run_name="case auto-close")
def case_auto_close(now: datetime | None = None) -> list[str]:
    """Close every case that has waited on the customer for 14 days after at least 2 contact attempts
    (`scheduling.sla.auto_close_due`) and queue the customer's email; one transaction per case."""
    runtime, log = current(), get_run_logger()
    at = now or utcnow()
    with session_scope(runtime.engine) as session:
        refs = [c.ref for c in cases.waiting_cases(session=session)]
    closed = []
    for ref in refs:
        with session_scope(runtime.engine) as session:
            if cases.auto_close(
                cases.get_case(ref, session=session), now=at, actor=runtime.actor, session=session
            ):
                closed.append(ref)
    log.info("auto-closed %d of %d cases waiting on customers: %s", len(closed), len(refs), closed)
    return closed
