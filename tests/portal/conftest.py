"""The portal against a real database (SQLite and PostgreSQL), its real outbox-directory mail adapter
and Starlette's in-process test client. Two customers, each with designated users and one announced
update: acme (America/New_York, windows Tue/Thu 02:00) and umbrella (UTC, windows Mon/Wed 03:00)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from flows.schedule import VendorTerms, schedule_update
from inventory.db import session_scope
from inventory.importer import import_inventory
from tasks.mail import OutboxDirTransport
from upkeep.portal.app import create_app
from upkeep.portal.config import PortalConfig

NOW = datetime(2026, 11, 23, tzinfo=UTC)
SHA = "ab" * 32
SECRET = b"s" * 48
VENDOR = VendorTerms(
    "upkeep@vendor.example",
    "support@vendor.example",
    portal_url="http://testserver",
    portal_key=lambda: SECRET,  # notices' links are signed with the portal's key
)


def _cluster(name: str, version: str, days: str, start: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "software",
        "version": version,
        "access": {"type": "direct"},
        "nodes": [{"hostname": f"{name}-n{i}"} for i in (1, 2)],
        "windows": [{"days": days, "start": start, "duration": "4h"}],
    }


INVENTORY: dict[str, Any] = {
    "customers": [
        {
            "name": "acme",
            "timezone": "America/New_York",
            "contacts": [{"email": "ops@acme.example"}],
            "clusters": [_cluster("acme-c1", "9.8.0", "tue,thu", "02:00")],
            "portal_users": [{"email": "ann@acme.example", "name": "Ann"}, {"email": "bob@acme.example"}],
        },
        {
            "name": "umbrella",
            "timezone": "UTC",
            "contacts": [{"email": "ops@umbrella.example"}],
            "clusters": [_cluster("umb-c1", "9.8.0", "mon,wed", "03:00")],
            "portal_users": [{"email": "eve@umbrella.example"}],
        },
    ],
    "releases": [{"version": "9.9.0", "package": "r/9.9.0.tgz", "sha256": SHA, "from": ["9.8.0"]}],
}


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Portal:
    engine: Engine
    client: TestClient
    clock: Clock
    outbox: Path
    inventory: Path
    updates: dict[str, int] = field(default_factory=dict)  # cluster -> update id
    landed: str = ""  # where the last sign_in() ended up

    def mails(self, to: str) -> list[Any]:
        found = []
        for path in sorted(self.outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
            message = message_from_bytes(path.read_bytes(), policy=policy.default)
            if to in str(message["To"]):
                found.append(message)
        return found

    def link_for(self, to: str) -> str:
        """The sign-in link in the newest email to `to`."""
        mails = self.mails(to)
        assert mails, f"no mail to {to}"
        text = mails[-1].get_body(preferencelist=("plain",)).get_content()
        [link] = re.findall(r"https?://\S+/signin/link\?t=\S+", text)
        return link

    def reimport(self, data: dict[str, Any]) -> None:
        self.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        import_inventory(self.inventory, engine=self.engine, actor="test")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(portal: Portal, email: str, client: TestClient | None = None) -> str:
    """Sign `email` in through the pages; the session's CSRF token."""
    client = client or portal.client
    page = client.get("/signin")
    response = client.post("/signin", data={"csrf": csrf_of(page.text), "email": email})
    assert response.status_code == 200, response.text
    link = portal.link_for(email.lower())
    page = client.get(link.split("testserver", 1)[-1] if "testserver" in link else link)
    assert page.status_code == 200, page.text
    token = re.search(r'name="t" value="([^"]+)"', page.text)
    assert token
    response = client.post("/signin/link", data={"csrf": csrf_of(page.text), "t": token.group(1)})
    assert response.status_code == 200 and response.url.path.startswith("/maintenance"), response.text
    portal.landed = response.url.path
    return csrf_of(response.text)


@pytest.fixture
def portal(engine: Engine, tmp_path: Path) -> Iterator[Portal]:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(INVENTORY, sort_keys=False))
    import_inventory(path, engine=engine, actor="test")
    updates = {}
    with session_scope(engine) as session:
        for cluster in ("acme-c1", "umb-c1"):
            run = schedule_update(
                cluster, "9.9.0", now=NOW, requested_by="sre", session=session, vendor=VENDOR
            )
            assert run.id is not None
            updates[cluster] = run.id
    clock = Clock()
    outbox = tmp_path / "outbox"
    config = PortalConfig(
        engine=engine,
        mailer=OutboxDirTransport(outbox),
        mail_from="Upkeep <upkeep@vendor.example>",
        base_url="http://testserver",
        secret=SECRET,
        vendor=VENDOR,
        now=clock,
        link_ttl=timedelta(minutes=15),
        package_cache=tmp_path / "packages",
    )
    with TestClient(create_app(config), base_url="http://testserver") as client:
        yield Portal(engine, client, clock, outbox, path, updates)
