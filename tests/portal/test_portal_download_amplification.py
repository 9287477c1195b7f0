"""A signed-in user's HEAD and Range requests for a release (adversarial review of #17), with the
in-memory FileServer (tests/support/fakes.py) counting what the portal fetches for them."""

from __future__ import annotations

from sqlmodel import select

from inventory.db import session_scope
from inventory.models import Release
from tests.portal.conftest import Portal, sign_in
from tests.support.fakes import FakeFileServer


def test_head_and_range_requests_do_not_each_fetch_the_whole_package(portal: Portal) -> None:
    fake = FakeFileServer()
    sha = fake.add("r/9.9.0.tgz", b"x" * 100_000)
    with session_scope(portal.engine) as session:
        release = session.exec(select(Release).where(Release.version == "9.9.0")).one()
        release.sha256 = sha
        session.add(release)
    portal.client.app.state.portal.config.fileserver = fake
    sign_in(portal, "ann@acme.example")
    assert portal.client.head("/downloads/9.9.0").status_code == 200
    for start in range(4):
        part = portal.client.get("/downloads/9.9.0", headers={"Range": f"bytes={start}-{start}"})
        assert part.status_code == 206 and part.content == b"x"
    assert len(fake.downloads) <= 1, fake.downloads
