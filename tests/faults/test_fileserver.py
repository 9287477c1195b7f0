"""The vendor's file server misbehaving: wrong password, missing package, server error, a server that
never answers, a download cut half-way, a certificate from another CA, plain http, and an upload to
a path that exists. Each must be one clear error with no node touched (or, for the cut, a resumed
download that the server saw as a Range request).

Wrong checksum: tests/integration/test_product_update.py::test_package_with_wrong_checksum_touches_no_node.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flows.product_update
from flows.product_update import product_update
from flows.steps import download
from inventory.models import RunState
from tasks.fileserver import FileServerError, HttpFileServer
from tests.faults.fakeserver import FakeFileServer, make_ca
from tests.faults.helpers import TARGET, runs_of, steps_of, upgrades

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.prefect]
PACKAGE = f"releases/upkeep-product-{TARGET}.tar.gz"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("fake-ca"))


@pytest.fixture
def fake(faults_lab: Any, certs: Path) -> Iterator[FakeFileServer]:
    with FakeFileServer(root=faults_lab.fileserver_root, certs=certs) as server:
        yield server


@pytest.fixture
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The download task keeps its retries, without the 1 s and 5 s waits between them."""
    monkeypatch.setattr(flows.product_update, "download", download.with_options(retry_delay_seconds=0))


def _client(fake: FakeFileServer, **changes: Any) -> HttpFileServer:
    options: dict[str, Any] = {"url": fake.url, "user": fake.user, "password": fake.password, "ca": fake.ca}
    return HttpFileServer(**{**options, **changes})


def _failed_download(runtime: Any, lab: Any, cluster: str) -> str:
    state = product_update(cluster=cluster, to_version=TARGET, return_state=True)
    assert state.is_failed(), state.message
    (run,) = runs_of(runtime.engine, cluster)
    assert run.state == RunState.failed
    assert upgrades(lab, cluster) == [0, 0, 0]
    # Only download attempts (one row per try of the task); no node was even connected to for the update.
    assert {(host, step) for host, step, _, _ in steps_of(runtime.engine, run.id or 0)} == {("", "download")}
    return run.reason


@pytest.mark.parametrize(
    ("fault", "password", "expected", "case"),
    [
        (
            "",
            "wrong-password",
            f"download of {PACKAGE}: HTTP 401 credentials refused",
            "401 (wrong password)",
        ),
        ("status:404", None, f"download of {PACKAGE}: HTTP 404 not found", "404 (missing package)"),
        ("status:500", None, f"download of {PACKAGE}: HTTP 500 Internal Server Error", "500"),
        ("hang", None, f"download of {PACKAGE} failed after 3 attempts", "timeout (server never answers)"),
    ],
)
def test_a_refused_or_failed_download_is_one_clear_error_and_no_node_is_touched(
    fault: str,
    password: str | None,
    expected: str,
    case: str,
    fake: FakeFileServer,
    faults_lab: Any,
    faults_cluster: str,
    faults_runtime: Any,
    no_retry_wait: None,
    record: Any,
) -> None:
    if fault:
        fake.faults[PACKAGE] = fault
    faults_runtime.fileserver = _client(fake, password=password or fake.password, timeout=0.5)

    reason = _failed_download(faults_runtime, faults_lab, faults_cluster)

    assert reason.startswith(expected), reason
    assert fake.password not in reason and "wrong-password" not in reason
    record("file server", case)


def _big_package(root: Path, version: str, megabytes: int) -> tuple[str, str]:
    """A real product package (VERSION + incompressible filler) of a few MB under `root`; returns
    (path on the server, sha256). The client writes to disk in 1 MiB chunks, so a cut past the first
    MiB leaves a partial file to resume from."""
    import gzip
    import hashlib
    import io
    import tarfile

    filler = hashlib.shake_256(b"big package").digest(megabytes << 20)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in (("VERSION", f"{version}\n".encode()), ("payload.bin", filler)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = f"releases/big-{version}.tar.gz"
    (root / "releases").mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(raw.getvalue())
    return path, hashlib.sha256(raw.getvalue()).hexdigest()


def test_a_download_cut_half_way_resumes_with_range_and_the_update_completes(
    faults_lab: Any, faults_cluster: str, faults_runtime: Any, certs: Path, tmp_path: Path, record: Any
) -> None:
    from sqlmodel import select

    from inventory.db import session_scope
    from inventory.models import Release

    package, sha256 = _big_package(tmp_path / "root", TARGET, 3)
    with session_scope(faults_runtime.engine) as session:
        release = session.exec(select(Release).where(Release.version == TARGET)).one()
        release.package, release.sha256 = package, sha256
        session.add(release)
    with FakeFileServer(root=tmp_path / "root", certs=certs, faults={package: "cut-once"}) as fake:
        faults_runtime.fileserver = _client(fake)

        state = product_update(cluster=faults_cluster, to_version=TARGET, return_state=True)

    assert state.is_completed(), state.message
    gets = [seen for seen in fake.seen if seen.method == "GET" and seen.path == package]
    assert [seen.range is None for seen in gets] == [True, False], gets
    resumed_from = int((gets[1].range or "").removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from < (tmp_path / "root" / package).stat().st_size  # only what it did not have
    assert upgrades(faults_lab, faults_cluster) == [1, 1, 1]
    record("file server", "connection cut mid-download: resumed with Range, verified")


def test_a_certificate_from_another_ca_is_refused(
    fake: FakeFileServer, tmp_path: Path, faults_lab: Any, record: Any
) -> None:
    other = make_ca(tmp_path / "other-ca")
    client = _client(fake, ca=other / "ca.pem", timeout=2)
    with pytest.raises(FileServerError, match="CERTIFICATE_VERIFY_FAILED"):
        client.download(PACKAGE, tmp_path / "pkg.tar.gz", sha256="0" * 64)
    assert not fake.seen  # no request was sent, so no credentials either
    for call in (lambda: client.size(PACKAGE), lambda: client.fetch_text("releases/index.json")):
        with pytest.raises(FileServerError, match="CERTIFICATE_VERIFY_FAILED"):
            call()
    # And the system's default trust store does not stand in for the configured CA.
    with pytest.raises(FileServerError, match="CERTIFICATE_VERIFY_FAILED"):
        _client(fake, ca=None, timeout=2).size(PACKAGE)
    assert not fake.seen
    record("access", "file server TLS: certificate from another CA refused")


def test_plain_http_is_refused_unless_explicitly_allowed(
    faults_lab: Any, tmp_path: Path, record: Any
) -> None:
    with FakeFileServer(root=faults_lab.fileserver_root, certs=tmp_path, tls=False) as plain:
        with pytest.raises(FileServerError, match="plain http: refused"):
            HttpFileServer(url=plain.url, user=plain.user, password=plain.password)
        allowed = HttpFileServer(url=plain.url, user=plain.user, password=plain.password, allow_http=True)
        assert allowed.size(PACKAGE) > 0  # the lab/dev switch works, and only it
    record("access", "file server: plain http refused unless fileserver_allow_http")


def test_an_unreachable_file_server_is_a_file_server_error_from_every_call(
    tmp_path: Path, record: Any
) -> None:
    import socket

    with socket.socket() as probe:  # a port with nothing listening: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HttpFileServer(url=f"https://127.0.0.1:{port}", user="u", password="p", timeout=2)
    local = tmp_path / "bundle.tar.gz"
    local.write_bytes(b"x")
    calls = {
        "download": lambda: client.download(PACKAGE, tmp_path / "p.tar.gz", sha256="0" * 64),
        "size": lambda: client.size(PACKAGE),
        "fetch_text": lambda: client.fetch_text("releases/index.json"),
        "upload": lambda: client.upload(local, "support/acme/CASE-1/b.tar.gz"),
    }
    for name, call in calls.items():
        with pytest.raises(FileServerError, match=f"127.0.0.1:{port}|refused"):
            call()
        record("file server", f"unreachable (connection refused): {name}")


def test_uploads_never_overwrite_an_existing_bundle(faults_lab: Any, tmp_path: Path, record: Any) -> None:
    o = faults_lab.settings_overrides()
    client = HttpFileServer(
        url=o["fileserver_url"],
        user=o["fileserver_user"],
        password=o["fileserver_password"],
        ca=Path(o["fileserver_ca"]),
    )
    path = f"support/acme/CASE-1/diag-{time.time_ns()}.tar.gz"
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"first bundle")
    second.write_bytes(b"second bundle")
    client.upload(first, path)
    with pytest.raises(FileServerError, match="already exists on the file server: not overwritten"):
        client.upload(second, path)
    assert (faults_lab.fileserver_root / path).read_bytes() == b"first bundle"
    record("access", "upload to an existing bundle path refused (never overwrites)")
