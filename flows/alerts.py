"""Alerting the SRE: the one function every flow and command calls (`alert_sre`), and the delivery
the dispatcher tick does (`deliver_alerts`).

`alert_sre` renders the SRE template (templates/alert.py) and queues the alert in our database, in the
caller's transaction when given one: it never talks to a channel, so a channel that is down can neither
fail nor delay a run. `deliver_alerts` sends due alerts to every channel (tasks/alerts.py: the Apprise
URLs of UPKEEP_ALERT_URLS, the SRE mailbox, and a page's people), remembers which channels took each
one, and retries the others later with the notices' backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import uuid4

from sqlmodel import Session

from flows.links import flow_run_url
from flows.runtime import Runtime
from inventory import repo
from inventory.alerts import Alert, claim_due, queue_alert, record_attempt, renew_claim
from inventory.db import session_scope
from inventory.models import Cluster
from inventory.runs import get_run
from tasks.alerts import (
    AlertChannel,
    AlertError,
    AlertMessage,
    AlertMessageError,
    AppriseChannel,
    EmailChannel,
)
from tasks.diagnostics import redact_text
from templates.alert import AlertContext, render_alert

__all__ = ["AlertReport", "alert_sre", "deliver_alerts"]

log = logging.getLogger(__name__)
CLAIM_HOLD = timedelta(minutes=2)  # a claimed alert is another deliverer's again after this


def alert_sre(
    runtime: Runtime | None,
    *,
    headline: str,
    cause: str,
    kind: str = "alert",
    run_id: int | None = None,
    node: str = "",
    step: str = "",
    detail: str = "",
    case_ref: str = "",
    bundle_url: str = "",
    action: str = "",
    customer: str = "",
    cluster: str = "",
    key: str | None = None,
    targets: Sequence[str] = (),
    paged: Sequence[str] = (),
    ack_command: str = "",
    session: Session | None = None,
    now: datetime | None = None,
) -> int:
    """Queue an SRE alert; returns its id. With `run_id`, customer, cluster, versions and the Prefect
    flow-run link come from the run's record. `key` makes it idempotent (the same key queues nothing
    new); `session` queues it in the caller's transaction. Never raises for a channel. Secrets in the
    text (a password in a URL the error quotes, a token) are redacted before anything is stored.
    Without a runtime (the notice deliverer, handed only an engine) `session` and `now` are required."""
    if runtime is None and (session is None or now is None):
        raise TypeError("alert_sre without a runtime needs the caller's session and now")
    headline, cause, detail, action = (redact_text(text) for text in (headline, cause, detail, action))
    with _session(runtime, session) as s:
        from_version = to_version = run_url = ""
        if run_id is not None:
            run = get_run(run_id, session=s)
            found = s.get(Cluster, run.cluster_id)
            assert found is not None
            cluster = cluster or found.name
            customer = customer or repo.customer_of(found, session=s).name
            from_version, to_version = run.from_version, run.to_version
            run_url = flow_run_url(run.flow_run_id)
        if now is None:
            assert runtime is not None
            now = runtime.clock()
        rendered = render_alert(
            AlertContext(
                headline=headline,
                cause=cause,
                at=now,
                customer=customer,
                cluster=cluster,
                run_id=run_id,
                from_version=from_version,
                to_version=to_version,
                node=node,
                step=step,
                detail=detail,
                flow_run_url=run_url,
                case_ref=case_ref,
                bundle_url=bundle_url,
                action=action,
                paged=tuple(paged),
                ack_command=ack_command,
            )
        )
        alert = queue_alert(
            key=key or f"{kind}:{run_id if run_id is not None else cluster or 'fleet'}:{uuid4().hex[:12]}",
            kind=kind,
            subject=rendered.subject,
            body_text=rendered.text,
            body_html=rendered.html,
            session=s,
            now=now,
            run_id=run_id,
            customer=customer,
            cluster=cluster,
            targets=targets,
        )
        log.warning("SRE alert queued: %s", rendered.subject)
        assert alert.id is not None
        return alert.id


@contextmanager
def _session(runtime: Runtime | None, session: Session | None) -> Iterator[Session]:
    if session is not None:
        yield session
        return
    assert runtime is not None
    with session_scope(runtime.engine) as own:
        yield own


@dataclass
class AlertReport:
    sent: list[str] = field(default_factory=list)  # keys every channel took
    retrying: list[str] = field(default_factory=list)  # keys some channel did not take yet
    errors: list[str] = field(default_factory=list)


def deliver_alerts(runtime: Runtime, *, now: datetime | None = None, limit: int = 100) -> AlertReport:
    """Send due alerts to each channel that has not taken them yet. Never raises for a channel.

    A channel that failed once is not tried again in this delivery (a channel that accepts and never
    answers costs one timeout, not one per queued alert); each alert's claim is taken again right
    before it is sent, so an alert another deliverer took while this one was slow is not sent twice."""
    now = now or runtime.clock()
    report = AlertReport()
    with session_scope(runtime.engine) as session:
        claimed = [(a.id, a.next_attempt_at) for a in claim_due(session, now, hold=CLAIM_HOLD, limit=limit)]
    failed: dict[str, str] = {}  # channel name -> its error in this delivery
    for alert_id, claim in claimed:
        assert alert_id is not None and claim is not None
        until = max(now, runtime.clock()) + CLAIM_HOLD
        with session_scope(runtime.engine) as session:
            alert = renew_claim(session, alert_id, claim, until)
            if alert is None:
                continue  # another deliverer has it now
            key, targets, delivered, message = alert.key, alert.targets, alert.delivered, _message(alert)
        done: list[str] = []
        errors: list[str] = []
        for channel in _channels(runtime, targets, errors):
            if channel.name in delivered:
                continue
            # Every address goes through one mail server: when it is down, it is down for all of them.
            outage = getattr(channel, "outage", channel.name)
            if outage in failed:
                errors.append(f"{channel.name}: {failed[outage]} (not tried again in this delivery)")
                continue
            try:
                channel.send(message)
            except AlertError as exc:
                errors.append(str(exc))
                if not isinstance(exc, AlertMessageError):  # the channel is down, not just this message
                    failed[outage] = str(exc)
            else:
                done.append(channel.name)
        with session_scope(runtime.engine) as session:
            if record_attempt(session, alert_id, delivered=done, errors=errors, now=now, claim=until) is None:
                continue  # another deliverer took it meanwhile; what this one sent is remembered
        (report.retrying if errors else report.sent).append(key)
        report.errors += errors
    for error in report.errors:
        log.warning("SRE alert not delivered: %s (retried later)", error)
    return report


def _message(alert: Alert) -> AlertMessage:
    return AlertMessage(key=alert.key, subject=alert.subject, text=alert.body_text, html=alert.body_html)


def _channels(runtime: Runtime, targets: Sequence[str], errors: list[str]) -> list[AlertChannel]:
    channels = list(runtime.alert_channels)
    for target in targets:
        if "://" in target:
            try:
                channels.append(AppriseChannel(target))
            except ValueError as exc:
                errors.append(str(exc))
        else:
            channels.append(EmailChannel(runtime.mailer, runtime.mail_from, target))
    return channels
