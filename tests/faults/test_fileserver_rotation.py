"""The one file-server client a long-running process (dispatcher, worker, portal) keeps across runs
(tasks/fileserver.HttpFileServer): the server restarted between two requests, so its pooled
keep-alive connection is dead, and the server's certificate re-issued by a new CA that the operator
put at the same fileserver_ca path. Each must work on the next request without a process restart,
as it did when every request built its own client."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tasks.fileserver import FileServerError, HttpFileServer
from tests.faults.fakeserver import FakeFileServer, make_ca

pytestmark = [pytest.mark.faults]
PACKAGE = "releases/p.tar.gz"


def _root(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "root"
    (root / "releases").mkdir(parents=True)
    data = b"package" * 1000
    (root / PACKAGE).write_bytes(data)
    return root, hashlib.sha256(data).hexdigest()


def test_a_server_restart_between_two_requests_does_not_fail_the_next_one(tmp_path: Path) -> None:
    root, sha = _root(tmp_path)
    certs = make_ca(tmp_path / "ca")
    first = FakeFileServer(root=root, certs=certs)
    client = HttpFileServer(url=first.url, user=first.user, password=first.password, ca=first.ca, timeout=5)
    try:
        assert client.size(PACKAGE) == 7000  # leaves a keep-alive connection in the pool
        first.close()  # the restart cuts it
        with FakeFileServer(root=root, certs=certs, port=first.port) as second:
            assert client.size(PACKAGE) == 7000
            assert client.download(PACKAGE, tmp_path / "p.tar.gz", sha256=sha).is_file()
            assert second.seen
    finally:
        client.close()


def test_a_certificate_from_a_rotated_ca_at_the_same_path_is_trusted_without_a_restart(
    tmp_path: Path,
) -> None:
    root, sha = _root(tmp_path)
    old, new = make_ca(tmp_path / "old"), make_ca(tmp_path / "new")
    trusted = tmp_path / "fileserver-ca.pem"  # the operator's fileserver_ca
    shutil.copyfile(old / "ca.pem", trusted)
    first = FakeFileServer(root=root, certs=old)
    client = HttpFileServer(url=first.url, user=first.user, password=first.password, ca=trusted, timeout=5)
    try:
        assert client.size(PACKAGE) == 7000
        first.close()
        shutil.copyfile(new / "ca.pem", trusted)  # the CA rotated: new server cert, new CA file
        with FakeFileServer(root=root, certs=new, port=first.port):
            assert client.size(PACKAGE) == 7000
            assert client.download(PACKAGE, tmp_path / "p.tar.gz", sha256=sha).is_file()
    finally:
        client.close()


def test_a_ca_file_that_is_not_a_certificate_is_one_clear_error_and_the_next_request_works_once_fixed(
    tmp_path: Path,
) -> None:
    root, _sha = _root(tmp_path)
    certs = make_ca(tmp_path / "ca")
    trusted = tmp_path / "fileserver-ca.pem"
    shutil.copyfile(certs / "ca.pem", trusted)
    with FakeFileServer(root=root, certs=certs) as server:
        client = HttpFileServer(
            url=server.url, user=server.user, password=server.password, ca=trusted, timeout=5
        )
        try:
            assert client.size(PACKAGE) == 7000
            trusted.write_text("-----BEGIN CERT")  # a rotation caught half-way through writing the file
            with pytest.raises(FileServerError, match=f"file-server CA {trusted}: cannot be used"):
                client.size(PACKAGE)
            shutil.copyfile(certs / "ca.pem", trusted)
            assert client.size(PACKAGE) == 7000
        finally:
            client.close()
