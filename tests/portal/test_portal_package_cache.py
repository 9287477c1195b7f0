"""The portal's verified package copies (upkeep/portal/package_cache.py), behind the FileServer protocol
(the in-memory FakeFileServer counts fetches; the real HTTPS file server is in test_portal_downloads)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from tasks.fileserver import ChecksumMismatch
from tests.support.fakes import FakeFileServer
from upkeep.portal.package_cache import SUFFIX, CacheRefused, cached_package


class GatedFileServer(FakeFileServer):
    """A file server whose first download waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = threading.Event()
        self.go_on = threading.Event()

    def download(self, path: str, dest: Path, *, sha256: str) -> Path:
        self.inside.set()
        assert self.go_on.wait(60), "the test never let the download finish"
        return super().download(path, dest, sha256=sha256)


def packages(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


def test_requests_at_once_fetch_the_package_once(tmp_path: Path) -> None:
    """Four requests for a package not kept yet: one fetches (under the lock), the others wait and are
    served the same verified file, whenever they arrive."""
    server = GatedFileServer()
    sha = server.add("r/9.9.0.tgz", b"p" * 50_000)
    got: list[Path] = []

    def ask() -> None:
        got.append(cached_package(tmp_path, server, "r/9.9.0.tgz", sha))

    first = threading.Thread(target=ask)
    first.start()
    assert server.inside.wait(60)  # the first is fetching, holding the package's lock
    others = [threading.Thread(target=ask) for _ in range(3)]
    for thread in others:
        thread.start()
    server.go_on.set()
    for thread in (first, *others):
        thread.join(60)
    assert server.downloads == ["r/9.9.0.tgz"]
    assert len(got) == 4 and set(got) == {tmp_path / f"{sha}{SUFFIX}"}
    assert (tmp_path / f"{sha}{SUFFIX}").read_bytes() == b"p" * 50_000
    assert packages(tmp_path) == [f"{sha}{SUFFIX}"]  # no fetch directory left behind


def test_a_package_that_does_not_match_the_catalog_is_not_kept(tmp_path: Path) -> None:
    server = FakeFileServer()
    server.add("r/9.9.0.tgz", b"altered")
    recorded = hashlib.sha256(b"recorded").hexdigest()
    with pytest.raises(ChecksumMismatch):
        cached_package(tmp_path, server, "r/9.9.0.tgz", recorded)
    assert packages(tmp_path) == []
    server.add("r/9.9.0.tgz", b"recorded")  # put right on the server: fetched again, and kept
    assert cached_package(tmp_path, server, "r/9.9.0.tgz", recorded).read_bytes() == b"recorded"
    assert server.downloads == ["r/9.9.0.tgz", "r/9.9.0.tgz"]


def test_a_file_server_that_does_not_verify_is_checked_against_the_catalog(tmp_path: Path) -> None:
    class Careless(FakeFileServer):
        def download(self, path: str, dest: Path, *, sha256: str) -> Path:
            dest.write_bytes(self._get(path, "download"))
            return dest

    server = Careless()
    server.add("r/9.9.0.tgz", b"altered")
    with pytest.raises(CacheRefused, match="differs from the release catalog"):
        cached_package(tmp_path, server, "r/9.9.0.tgz", hashlib.sha256(b"recorded").hexdigest())
    assert packages(tmp_path) == []


def test_a_catalog_checksum_that_is_not_one_names_no_file(tmp_path: Path) -> None:
    server = FakeFileServer()
    server.add("r/9.9.0.tgz", b"p")
    for bad in ("../../etc/passwd", "AB" * 32, "a" * 63, ""):
        with pytest.raises(CacheRefused, match="is not 64 hex digits"):
            cached_package(tmp_path / "cache", server, "r/9.9.0.tgz", bad)
    assert server.downloads == [] and not (tmp_path / "cache").exists()


def test_only_the_most_recently_served_packages_are_kept(tmp_path: Path) -> None:
    server = FakeFileServer()
    shas = [server.add(f"r/{v}.tgz", v.encode() * 1000) for v in ("9.7.0", "9.8.0", "9.9.0")]
    old, mid, new = (tmp_path / f"{sha}{SUFFIX}" for sha in shas)
    cached_package(tmp_path, server, "r/9.7.0.tgz", shas[0], keep=2)
    cached_package(tmp_path, server, "r/9.8.0.tgz", shas[1], keep=2)
    # When each was served is stamped on its lock file (the package's mtime is its Last-Modified, adv53).
    os.utime(old.with_suffix(".lock"), (1_000, 1_000))
    os.utime(mid.with_suffix(".lock"), (2_000, 2_000))
    cached_package(tmp_path, server, "r/9.7.0.tgz", shas[0], keep=2)  # a hit: 9.7.0 is the newest now
    assert old.with_suffix(".lock").stat().st_mtime > 2_000
    assert server.downloads == ["r/9.7.0.tgz", "r/9.8.0.tgz"]
    cached_package(tmp_path, server, "r/9.9.0.tgz", shas[2], keep=2)
    assert packages(tmp_path) == sorted([old.name, new.name])  # 9.8.0, served longest ago, went
    assert cached_package(tmp_path, server, "r/9.8.0.tgz", shas[1], keep=2) == mid  # fetched again
    assert server.downloads[-1] == "r/9.8.0.tgz" and len(server.downloads) == 4
