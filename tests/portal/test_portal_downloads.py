"""Downloads through the portal from the lab's real HTTPS file server (nginx, basic auth, its own CA), on
SQLite and PostgreSQL: only releases the customer's clusters may move to, verified against their SHA-256
before a byte is served, and the file server's address and password never reach the browser."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select
from starlette.applications import Starlette

from inventory.db import session_scope
from inventory.models import Cluster, Release
from tasks.fileserver import HttpFileServer
from tests.portal.conftest import Portal, sign_in
from upkeep.lab import procs
from upkeep.lab.fileserver import USER, FileServer

pytestmark = pytest.mark.lab


@pytest.fixture
def served_files(portal: Portal, tmp_path: Path) -> Iterator[tuple[Portal, FileServer, str, bytes]]:
    server = FileServer(tmp_path / "fileserver")
    password = server.prepare()
    port = server.start(procs.free_ports(1)[0])
    package = secrets.token_bytes(200_000)
    (server.root / "releases" / "p-9.9.0.tar.gz").write_bytes(package)
    (server.root / "releases" / "p-9.8.1.tar.gz").write_bytes(b"old")
    with session_scope(portal.engine) as session:
        release = session.exec(select(Release).where(Release.version == "9.9.0")).one()
        release.package, release.sha256 = "releases/p-9.9.0.tar.gz", hashlib.sha256(package).hexdigest()
        session.add(release)
        # A release only umbrella's cluster (now on 9.7.0) may move to.
        umbrella = session.exec(select(Cluster).where(Cluster.name == "umb-c1")).one()
        umbrella.version = "9.7.0"
        session.add(umbrella)
        old = hashlib.sha256(b"old").hexdigest()
        session.add(
            Release(version="9.8.1", package="releases/p-9.8.1.tar.gz", sha256=old, upgradable_from=["9.7.0"])
        )
    app = portal.client.app
    assert isinstance(app, Starlette)
    app.state.portal.config.fileserver = HttpFileServer(
        url=f"https://127.0.0.1:{port}", user=USER, password=password, ca=server.ca
    )
    try:
        yield portal, server, password, package
    finally:
        server.stop()


def changed(package: bytes) -> bytes:
    """The package as altered on the server after its release was recorded: its last byte differs.
    (Writing a fixed byte there left 1 random package in 256 - those ending in it - as it was.)"""
    return package[:-1] + bytes([package[-1] ^ 0xFF])


def test_the_altered_package_differs_from_the_recorded_one_whatever_the_random_draw() -> None:
    # The served package is random bytes: whatever byte it ends in, the altered one must differ.
    for last in range(256):
        package = secrets.token_bytes(15) + bytes([last])
        assert changed(package) != package, f"a package ending in {bytes([last])!r} is left as it was"


def test_download_a_release_verified_and_without_the_file_servers_secrets(
    served_files: tuple[Portal, FileServer, str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    portal, server, password, package = served_files
    client = portal.client
    assert client.get("/downloads/9.9.0").url.path == "/signin"  # signed out: nothing
    sign_in(portal, "ann@acme.example")
    page = client.get("/downloads")
    assert "9.9.0" in page.text and hashlib.sha256(package).hexdigest() in page.text
    assert "9.8.1" not in page.text  # none of acme's clusters may move to it
    assert "127.0.0.1" not in page.text and password not in page.text
    assert client.get("/downloads/9.8.1").status_code == 404
    assert client.get("/downloads/..%2F..%2Fetc%2Fpasswd").status_code == 404

    # A package changed on the server since its release was recorded is not served (nor kept).
    (server.root / "releases" / "p-9.9.0.tar.gz").write_bytes(changed(package))
    with caplog.at_level(logging.WARNING, logger="upkeep.portal.app"):
        response = client.get("/downloads/9.9.0")
    # If this fails again, say how: sent to /signin (the session lost), served the package anyway, or
    # refused for another reason than its checksum (e.g. another server answered on the port).
    assert (response.url.path, response.history) == ("/downloads/9.9.0", []), "redirected"
    served = "the recorded package" if response.content == package else f"{len(response.content)} bytes"
    assert response.status_code == 503 and "not available right now" in response.text, served
    assert "download of releases/p-9.9.0.tar.gz failed: ChecksumMismatch" in caplog.text
    assert package[:100] not in response.content

    (server.root / "releases" / "p-9.9.0.tar.gz").write_bytes(package)
    response = client.get("/downloads/9.9.0")
    assert response.status_code == 200 and response.content == package
    assert 'filename="p-9.9.0.tar.gz"' in response.headers["content-disposition"]
    assert password not in str(response.headers) and "127.0.0.1" not in str(response.headers)
    # Verified once and kept (upkeep/portal/package_cache.py): the server's copy changing afterwards
    # changes nothing for the customer, who still gets the package the release recorded.
    (server.root / "releases" / "p-9.9.0.tar.gz").write_bytes(changed(package))
    response = client.get("/downloads/9.9.0")
    assert response.status_code == 200 and response.content == package
