"""What the portal runs with: built from Settings by `from_settings`, or directly by tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from flows.run_notices import VendorTerms
from flows.runtime import Clock
from tasks.fileserver import FileServer
from tasks.mail import MailTransport
from upkeep.settings import Settings


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PortalConfig:
    engine: Engine
    mailer: MailTransport
    mail_from: str
    base_url: str  # links in emails start with it, e.g. https://portal.vendor.example
    secret: bytes
    vendor: VendorTerms = field(default_factory=VendorTerms)
    fileserver: FileServer | None = None  # downloads are proxied from it (its password stays here)
    package_cache: Path | None = None  # verified packages kept for downloads; None: a temporary dir
    link_ttl: timedelta = timedelta(minutes=15)
    session_ttl: timedelta = timedelta(hours=8)
    now: Clock = _utcnow  # a FakeClock in tests (tests/support/fakes.py)
    # Sign-in link requests: per known address per link lifetime, and per client per 15 minutes.
    links_per_address: int = 3
    requests_per_client: int = 10
    client_window: timedelta = timedelta(minutes=15)

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")


def from_settings(settings: Settings, *, engine: Engine) -> PortalConfig:
    from email.utils import parseaddr

    from upkeep.bootstrap import build_fileserver, build_mailer

    secret = settings.resolved_portal_secret()
    return PortalConfig(
        engine=engine,
        fileserver=build_fileserver(settings),
        package_cache=settings.home / "portal-packages",
        mailer=build_mailer(settings),
        mail_from=settings.mail_from,
        base_url=settings.portal_url,
        secret=secret,
        vendor=VendorTerms(
            organizer=parseaddr(settings.mail_from)[1] or VendorTerms.organizer,
            support_contact=settings.support_contact,
            sre_email=settings.sre_email,
            per_node_estimate=timedelta(minutes=settings.per_node_minutes),
            portal_url=settings.portal_url,
            portal_key=lambda: secret,
        ),
        link_ttl=timedelta(minutes=settings.portal_link_minutes),
        session_ttl=timedelta(hours=settings.portal_session_hours),
    )
