"""HttpFileServer through an httpx transport (httpx.MockTransport): one client for every request,
resumed downloads, and the file server's answers mapped to FileServerError. The real nginx is in
tests/faults/test_fileserver.py and the integration tests; this pins the client's own logic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from tasks import fileserver
from tasks.fileserver import ChecksumMismatch, FileServerError, HttpFileServer

PACKAGE = b"package bytes " * 250_000  # 3.5 MB: more than one CHUNK (1 MiB) is written at a time
SHA = hashlib.sha256(PACKAGE).hexdigest()


class Server:
    """What the vendor's nginx answers, in memory; counts requests and the clients that sent them."""

    def __init__(self) -> None:
        self.files = {"/releases/p.tar.gz": PACKAGE}
        self.requests: list[httpx.Request] = []
        self.cut_after: int | None = None  # the first GET's body stops after this many bytes

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.headers.get("authorization") != httpx.BasicAuth("u", "p")._auth_header:
            return httpx.Response(401)
        if request.method == "PUT":
            if path in self.files:
                return httpx.Response(412)
            self.files[path] = request.read()
            return httpx.Response(201)
        if path not in self.files:
            return httpx.Response(404)
        data = self.files[path]
        if request.method == "HEAD":
            return httpx.Response(200, headers={"content-length": str(len(data))})
        start = int(request.headers.get("range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        if self.cut_after is not None:
            cut, self.cut_after = self.cut_after, None
            return httpx.Response(200, stream=_Cut(data[:cut]))
        status = 206 if start else 200
        return httpx.Response(status, content=data[start:])


class _Cut(httpx.SyncByteStream):
    def __init__(self, head: bytes) -> None:
        self.head = head

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield self.head
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


@pytest.fixture
def server() -> Server:
    return Server()


def _files(server: Server, **overrides: object) -> HttpFileServer:
    settings: dict[str, object] = {"url": "https://files.example", "user": "u", "password": "p"}
    return HttpFileServer(**(settings | overrides), transport=httpx.MockTransport(server))  # type: ignore[arg-type]


def test_every_request_goes_through_one_client(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[httpx.Client] = []
    real = httpx.Client

    def counting(*args: object, **kwargs: object) -> httpx.Client:
        client = real(*args, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    monkeypatch.setattr(fileserver.httpx, "Client", counting)
    files = _files(server)
    assert made == []  # building it opens nothing

    files.download("releases/p.tar.gz", tmp_path / "p.tar.gz", sha256=SHA)
    assert files.size("releases/p.tar.gz") == len(PACKAGE)
    assert files.fetch_text("releases/p.tar.gz").startswith("package bytes")
    files.upload(tmp_path / "p.tar.gz", "bundles/b.tar.gz")

    assert len(made) == 1 and len(server.requests) == 4
    files.close()
    assert made[0].is_closed
    files.size("releases/p.tar.gz")  # a request after close opens a new client
    assert len(made) == 2


def test_a_download_cut_mid_body_resumes_from_what_was_written(server: Server, tmp_path: Path) -> None:
    server.cut_after = fileserver.CHUNK + 5000  # one whole chunk reached the disk before the cut

    path = _files(server).download("releases/p.tar.gz", tmp_path / "p.tar.gz", sha256=SHA)

    assert path.read_bytes() == PACKAGE
    assert [r.headers.get("range") for r in server.requests] == [None, f"bytes={fileserver.CHUNK}-"]


def test_a_wrong_checksum_discards_the_package(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatch, match=f"expected {'0' * 64}; package discarded"):
        _files(server).download("releases/p.tar.gz", tmp_path / "p.tar.gz", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda f, tmp: f.size("releases/missing.tar.gz"), "HTTP 404 not found"),
        (lambda f, tmp: f.upload(tmp / "x", "releases/p.tar.gz"), "already exists on the file server"),
        (lambda f, tmp: f.size("../etc/passwd"), "is not a plain relative path"),
    ],
    ids=["missing", "no-overwrite", "unsafe-path"],
)
def test_refusals_are_file_server_errors(server: Server, tmp_path: Path, call: object, said: str) -> None:
    (tmp_path / "x").write_bytes(b"x")
    with pytest.raises(FileServerError, match=said):
        call(_files(server), tmp_path)  # type: ignore[operator]


def test_wrong_credentials_name_the_setting(server: Server) -> None:
    with pytest.raises(FileServerError, match=r"HTTP 401 credentials refused.*check fileserver_user"):
        _files(server, password="wrong").size("releases/p.tar.gz")
