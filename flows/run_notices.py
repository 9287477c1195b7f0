"""Notices about one update (run), built from its record: what the customer and the SRE are told.

The one place a NoticeContext is put together. Each notice is queued in the caller's transaction with
the key (update, kind, sequence[, variant]), so writing the same notice again (a resumed run starting
twice) queues nothing new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import or_
from sqlmodel import Session, col, select

from flows.portal_links import PortalLinks, link_expiry
from inventory.installation import installation_id
from inventory.models import Cluster, Contact, Customer, Release, UpgradeRun
from inventory.outbox import Notice, NoticeState, maybe_delivered
from inventory.portal_access import designated_emails
from scheduling.deferral import DeferralPolicy
from scheduling.times import describe
from templates import NoticeContext, NoticeKind

if TYPE_CHECKING:
    from flows.runtime import Runtime

PER_NODE_ESTIMATE = timedelta(minutes=10)
DEFERRALS = DeferralPolicy()
# Nothing reads replies: designated users act in the portal; without any, the support contact does it.
_PORTAL_HOW = "Confirm or defer it in the maintenance portal (sign in with your designated address): {url}"
_CONFIRM_HOW = "Confirm it in the maintenance portal (sign in with your designated address): {url}"
_SUPPORT_HOW = "Ask your support contact (below) to defer {ref}."


@dataclass(frozen=True)
class VendorTerms:
    """The vendor's side of a notice: who it comes from (the invite's organizer), the support contact
    it names, where SRE alerts go, and how long one node's upgrade is estimated to take."""

    organizer: str = "upkeep@localhost"
    support_contact: str = "support@localhost"
    sre_email: str = "sre@localhost"
    per_node_estimate: timedelta = PER_NODE_ESTIMATE
    portal_url: str = ""  # the customer portal (empty: notices name the support contact instead)
    # The portal key that signs the notices' links into the portal (flows/portal_links.py), read when
    # first needed; None or an empty key: the links are unsigned (the page still needs a sign-in).
    portal_key: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)

    def portal_links(self) -> PortalLinks | None:
        """The signer of links into the portal, or None when there is no portal or no key."""
        key = self.portal_key() if self.portal_url and self.portal_key is not None else b""
        return PortalLinks(self.portal_url, key) if key else None

    @classmethod
    def configured(cls) -> VendorTerms:
        """From the flow runtime when one is configured (the CLI does), else the defaults."""
        from flows.runtime import RuntimeNotConfigured, current

        try:
            return cls.from_runtime(current())
        except RuntimeNotConfigured:
            return cls()

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> VendorTerms:
        return cls(
            organizer=parseaddr(runtime.mail_from)[1] or cls.organizer,
            support_contact=runtime.support_contact,
            sre_email=runtime.sre_email,
            per_node_estimate=runtime.per_node_estimate,
            portal_url=runtime.portal_url,
            portal_key=runtime.portal_key,
        )


def update_ref(run_id: int | None) -> str:
    return f"update-{run_id}"


def customer_knows(run: UpgradeRun, session: Session) -> bool:
    """Whether the customer was told anything about this update before (a notice of it was delivered:
    `told_at`, or one is still on its way to them: pending, a temporary refusal retried). Every later
    notice of a move or an ending asks this first: a 'rescheduled' or 'stopped' about an update never
    announced is the customer's first word of it (flows/endings.py, adv50). A notice the mail server
    refused for good (`failed`, a 5xx), or one superseded before it went out, told them nothing: a
    customer whose only 'scheduled' bounced never heard of the update. One of unknown delivery (handed
    over whole, the answer unreadable: `maybe_delivered`) may have told them: they may hold its invite,
    so its ending is told (adv58); it still does not count as told for starting the update."""
    if run.told_at is not None:  # set only when a notice of it was delivered (inventory/runs.py)
        return True
    query = (
        select(Notice.id)
        .where(
            col(Notice.update_ref) == update_ref(run.id),
            or_(col(Notice.state).in_((NoticeState.pending, NoticeState.sent)), maybe_delivered()),
        )
        .limit(1)
    )
    return session.exec(query).first() is not None


def move_notice(run: UpgradeRun, session: Session) -> NoticeKind | None:
    """The notice a move of a planned `run` sends: 'rescheduled' to a customer who knows of it; the update
    announced anew ('scheduled', at its new slot) when it was announced but every notice of it was refused
    for good (a bounced 'scheduled': the customer never heard of it, and a 'rescheduled' would be their
    first word; left silent, the update slid a day at a time and nothing ever told them once the contact
    was fixed; still so when a notice pending since is one this move supersedes, adv57); none when it was
    never announced (an SRE's `request --now` carried over: its start tells them, adv50)."""
    ref = update_ref(run.id)

    def any_in(*states: NoticeState) -> bool:
        query = select(Notice.id).where(col(Notice.update_ref) == ref, col(Notice.state).in_(states))
        return session.exec(query.limit(1)).first() is not None

    if run.told_at is not None or any_in(NoticeState.sent):
        return NoticeKind.rescheduled
    # Refused, and nothing delivered since: a notice still pending (the 'scheduled' anew of a move earlier
    # in this tick, a reminder) is superseded by this one and tells them nothing either (adv57).
    if any_in(NoticeState.failed):
        return NoticeKind.scheduled
    return NoticeKind.rescheduled if any_in(NoticeState.pending) else None


def queue_move_notice(
    run: UpgradeRun,
    kind: NoticeKind,
    *,
    session: Session,
    now: datetime,
    vendor: VendorTerms | None,
    previous: datetime | None,
    reason: str,
) -> bool:
    """Queue the notice of a move (`move_notice`'s kind): a 'rescheduled' names the slot it had and why;
    a 'scheduled' anew announces the new slot alone (the customer never heard of the old one)."""
    moved = kind is NoticeKind.rescheduled
    return queue_run_notice(
        run,
        kind,
        session=session,
        now=now,
        vendor=vendor,
        previous_slot_start=previous if moved else None,
        reason=reason if moved else "",
    )


def contact_emails(customer: Customer, session: Session) -> tuple[str, ...]:
    """The customer's contacts, then its portal users (the designated people get every notice too)."""
    query = select(Contact.email).where(Contact.customer_id == customer.id).order_by(col(Contact.id))
    emails = [*session.exec(query), *designated_emails(customer.id, session=session)]
    unique: dict[str, str] = {}
    for email in emails:
        unique.setdefault(email.lower(), email)
    return tuple(unique.values())


def deferral_options(run: UpgradeRun, start: datetime, zone: str, session: Session) -> str:
    """What the customer may really do about the date, for the notice: none for an urgent update or
    when the release deadline leaves no room, else the limits that are left (README, "Deadlines and
    urgency")."""
    release = session.exec(select(Release).where(Release.version == run.to_version)).first()
    return deferral_limits(run, start, zone, release)


def deferral_limits(run: UpgradeRun, start: datetime, zone: str, release: Release | None) -> str:
    """`deferral_options` with the release already read (None: withdrawn, no deadline)."""
    deadline = release.deadline if release is not None else None
    day = deadline.astimezone(ZoneInfo(zone)).strftime("%a %d %b %Y") if deadline is not None else ""
    left, most = DEFERRALS.max_count - run.deferrals, describe(DEFERRALS.max_delay)
    if run.urgent:
        return "no deferral possible: this is an urgent update (a security or data-loss fix)"
    if deadline is not None and deadline <= start:
        return f"no deferral possible: the release deadline is {day}"
    if left <= 0:
        return f"no deferral left: all {DEFERRALS.max_count} have been used"
    limit = f", never past the release deadline {day}" if deadline is not None else ""
    return f"at most {DEFERRALS.max_count} deferrals ({left} left), each by up to {most}{limit}"


def portal_link(
    run: UpgradeRun, customer: Customer, vendor: VendorTerms, now: datetime, session: Session
) -> str:
    """The update's page in the portal, signed and expiring a week after its slot (flows/portal_links.py),
    when the customer has designated users; "" when there is no portal or nobody to use it."""
    if not vendor.portal_url:
        return ""
    return _portal_link(run, customer, vendor, now, bool(designated_emails(customer.id, session=session)))


def _portal_link(
    run: UpgradeRun, customer: Customer, vendor: VendorTerms, now: datetime, designated: bool
) -> str:
    if not vendor.portal_url or not designated:
        return ""
    links = vendor.portal_links()
    if links is None or run.id is None or customer.id is None:
        return f"{vendor.portal_url}/maintenance/{update_ref(run.id)}"
    return links.update_link(run.id, customer.id, expires=link_expiry(run.slot_end, now))


def defer_how(run: UpgradeRun, vendor: VendorTerms, limits: str, link: str) -> str:
    """How the customer acts on an upcoming update: the update's page in the portal (`link`, from
    `portal_link`) when the customer has designated users (only Confirm when `limits`, from
    `deferral_options`, leaves no deferral), else the support contact."""
    ref = update_ref(run.id)
    if not link:
        if limits.startswith("no deferral"):
            return (
                f"{ref} cannot be deferred; questions go to your support contact ({vendor.support_contact})."
            )
        return _SUPPORT_HOW.format(support=vendor.support_contact, ref=ref)
    return (_CONFIRM_HOW if limits.startswith("no deferral") else _PORTAL_HOW).format(url=link)


def queue_run_notice(
    run: UpgradeRun,
    kind: NoticeKind | str,
    *,
    session: Session,
    now: datetime,
    vendor: VendorTerms | None = None,
    to_sre: bool = False,
    variant: str = "",
    case_ref: str | None = None,
    **extra: Any,
) -> bool:
    """Queue a `kind` notice about `run` to the customer's contacts (or the SRE). False if it has no one
    to go to (a customer without contacts): the caller decides whether that is an error. `case_ref`
    names another case than the one the update resolves (the one opened for its failure)."""
    vendor = vendor or VendorTerms.configured()
    cluster = session.get(Cluster, run.cluster_id)
    assert cluster is not None
    customer = session.get(Customer, cluster.customer_id)
    assert customer is not None and customer.id is not None
    recipients = (vendor.sre_email,) if to_sre else contact_emails(customer, session)
    if not recipients:
        return False
    start = run.slot_start or run.started_at or now
    release = session.exec(select(Release).where(Release.version == run.to_version)).first()
    designated = bool(vendor.portal_url) and bool(designated_emails(customer.id, session=session))
    ctx = _context(
        run,
        kind,
        cluster,
        customer,
        recipients,
        vendor=vendor,
        now=now,
        limits=deferral_limits(run, start, customer.timezone, release),
        link=_portal_link(run, customer, vendor, now, designated),
        installation=installation_id(session),
        to_sre=to_sre,
        case_ref=case_ref,
        session=session,
        **extra,
    )
    from flows.notify import queue_for  # imports Prefect: kept out of `upkeep calendar`'s start-up

    queue_for(ctx, customer_id=customer.id, session=session, stamp=now, variant=variant)
    return True


def _context(
    run: UpgradeRun,
    kind: NoticeKind | str,
    cluster: Cluster,
    customer: Customer,
    recipients: tuple[str, ...],
    *,
    vendor: VendorTerms,
    now: datetime,
    limits: str,
    link: str,
    installation: str,
    to_sre: bool,
    case_ref: str | None,
    session: Session,
    **extra: Any,
) -> NoticeContext:
    """The notice about `run`, from what its callers read (one run, or many at once)."""
    if not run.organizer:  # the first notice fixes who all of this update's notices come from
        run.organizer, run.support_contact = vendor.organizer, vendor.support_contact
        session.add(run)
    ref = update_ref(run.id)
    start = run.slot_start or run.started_at or now
    end = run.slot_end if run.slot_end and run.slot_end > start else start + vendor.per_node_estimate
    return NoticeContext(
        kind=NoticeKind(kind),
        update_ref=f"{ref}-sre" if to_sre else ref,
        sequence=run.notice_sequence,
        customer=customer.name,
        customer_timezone=customer.timezone,
        cluster=cluster.name,
        from_version=run.from_version,
        to_version=run.to_version,
        slot_start=start,
        slot_end=end,
        recipients=recipients,
        organizer=vendor.organizer if to_sre else run.organizer,
        support_contact=vendor.support_contact if to_sre else (run.support_contact or vendor.support_contact),
        installation=installation,
        defer_instructions=defer_how(run, vendor, limits, link),
        portal_link=link,
        deferral_limits=limits,
        urgent=run.urgent,
        case_ref=case_ref or run.case_ref or "",
        **extra,
    )


@dataclass(frozen=True)
class Reminder:
    """One reminder to queue with `queue_reminders`: the run (as read in the caller's transaction)."""

    run: UpgradeRun
    variant: str  # "72h" or "24h"
    preflight: str = ""
    tunnel_nodes: tuple[str, ...] = ()


def queue_reminders(
    reminders: list[Reminder], *, session: Session, now: datetime, vendor: VendorTerms
) -> list[Reminder]:
    """Queue many reminders in the caller's transaction, as `queue_run_notice(run, "reminder", ...)`
    would one by one, with the reads done once for all of them (clusters, customers, contacts, portal
    users, releases: five queries, not five per reminder) and the notices written in one INSERT
    (`flows.notify.queue_many`: ON CONFLICT DO NOTHING on the idempotency key, so a reminder queued
    meanwhile by another process is not queued twice). Returns the reminders queued now (not those
    already there, nor those whose customer has nobody to tell).

    Measured (bench/dispatch_tick.py, 500 reminders on PostgreSQL): one transaction and ~12 statements
    per reminder before (6,000 statements and 500 commits), rendering ~0.6 ms of it."""
    from inventory.portal_tables import PortalUser

    if not reminders:
        return []
    cluster_ids = {r.run.cluster_id for r in reminders}
    clusters = {c.id: c for c in session.exec(select(Cluster).where(col(Cluster.id).in_(cluster_ids)))}
    customer_ids = {c.customer_id for c in clusters.values()}
    customers = {c.id: c for c in session.exec(select(Customer).where(col(Customer.id).in_(customer_ids)))}
    emails: dict[int, list[str]] = {}
    for customer_id, email in session.exec(
        select(Contact.customer_id, Contact.email)
        .where(col(Contact.customer_id).in_(customer_ids))
        .order_by(col(Contact.id))
    ):
        emails.setdefault(customer_id, []).append(email)
    designated: dict[int, list[str]] = {}
    for customer_id, email in session.exec(
        select(PortalUser.customer_id, PortalUser.email)
        .where(col(PortalUser.customer_id).in_(customer_ids))
        .order_by(col(PortalUser.id))
    ):
        designated.setdefault(customer_id, []).append(email)
    versions = {r.run.to_version for r in reminders}
    releases = {r.version: r for r in session.exec(select(Release).where(col(Release.version).in_(versions)))}
    installation = installation_id(session)
    contexts: list[tuple[Reminder, NoticeContext, int]] = []
    for reminder in reminders:
        run = reminder.run
        cluster = clusters[run.cluster_id]
        customer = customers[cluster.customer_id]
        assert customer.id is not None
        unique: dict[str, str] = {}
        for email in [*emails.get(customer.id, []), *designated.get(customer.id, [])]:
            unique.setdefault(email.lower(), email)
        recipients = tuple(unique.values())
        if not recipients:
            continue
        start = run.slot_start or run.started_at or now
        ctx = _context(
            run,
            NoticeKind.reminder,
            cluster,
            customer,
            recipients,
            vendor=vendor,
            now=now,
            limits=deferral_limits(run, start, customer.timezone, releases.get(run.to_version)),
            link=_portal_link(run, customer, vendor, now, bool(designated.get(customer.id))),
            installation=installation,
            to_sre=False,
            case_ref=None,
            session=session,
            preflight=reminder.preflight,
            tunnel_nodes=reminder.tunnel_nodes,
        )
        contexts.append((reminder, ctx, customer.id))
    from flows.notify import queue_many  # imports Prefect: kept out of `upkeep calendar`'s start-up

    queued = queue_many(
        [(ctx, customer_id, reminder.variant) for reminder, ctx, customer_id in contexts],
        session=session,
        stamp=now,
    )
    return [reminder for (reminder, _, _), new in zip(contexts, queued, strict=True) if new]
