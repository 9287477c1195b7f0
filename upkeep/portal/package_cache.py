"""The portal's verified copies of release packages, so that a download is fetched from the file server
once per package, not once per request.

Each portal download (also a HEAD, or a download manager's one-byte Range probe) fetched and verified
the whole package into a temporary directory before answering: N requests pulled it N times (adv17). A
package is now kept as `<cache>/<sha256>.pkg`, its name the SHA-256 the release catalog gives for it:

* written only whole and verified: fetched into a private directory under the cache, its SHA-256
  checked against the catalog's, then renamed into place (atomic on one filesystem); a failed or
  mismatched fetch leaves nothing behind;
* fetched once at a time per package: an exclusive `flock` on `<sha256>.lock` (across threads and
  processes); whoever waited finds the file there and does not fetch it again;
* bounded: after a fetch, all but the `keep` most recently served packages are removed (a hit renews
  the mtime of the package's lock file, not of the package: that is its Last-Modified and ETag).
  An evicted package is fetched again when asked for. A request streaming a file that is then
  removed keeps reading it (POSIX keeps an open file), and the file just served is the newest, never
  the one evicted;
* swept: a fetch killed mid-way (kill -9, OOM, a restart) leaves `.fetch-<sha256>-*`; the next fetch
  removes every such directory whose package lock nobody holds (adv53);
* regular files only: a symlink (or anything else) planted under a package's name is removed and the
  package fetched, and a lock file is opened without following links (adv53);
* room made: a fetch that finds the disk full removes the other kept packages and tries once more;
* checked once per process: a copy this process did not write is hashed before it is first served
  (a power cut can leave the name with part of the data; a copy can be damaged or altered on disk);
  a bad one is removed and fetched again. Written copies are fsync'd before they get their name;
* one clear error: a cache directory that cannot be used (not a directory, not writable, disk full)
  is a CacheRefused naming it; the portal logs that line and answers 503.

The portal opens the file (`open_package`) and serves that open file with Starlette's FileResponse
(HEAD and Range answered from disk): an eviction after the open does not reach the answer.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.fileserver import FileServer, sha256_of

log = logging.getLogger(__name__)
SHA256 = re.compile(r"[0-9a-f]{64}")
SUFFIX = ".pkg"
FETCHING = ".fetch-"  # a fetch's own directory: .fetch-<sha256>-<random>
KEEP = 4


class CacheRefused(Exception):
    """The catalog's SHA-256 for a package is not one (a cache file cannot be named by it)."""


@contextmanager
def _locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock on `path` (yields True), or, with `wait` False and another holding it,
    yield False at once. O_NOFOLLOW: a link planted as a lock file is refused, its target never made."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def cached_package(
    cache: Path, fileserver: FileServer, package: str, sha256: str, *, keep: int = KEEP
) -> Path:
    """The verified local copy of `package` (catalog SHA-256 `sha256`), fetched first if not there."""
    if not SHA256.fullmatch(sha256):
        raise CacheRefused(
            f"release catalog: SHA-256 {sha256[:80]!r} of {package[:120]!r} is not 64 hex digits"
        )
    try:
        return _cached(cache, fileserver, package, sha256, keep)
    except OSError as exc:  # the cache's own disk: not a directory, not writable, full
        why = "not a directory" if cache.exists() and not cache.is_dir() else exc.strerror or str(exc)
        raise CacheRefused(f"package cache {cache}: cannot keep {package[:120]}: {why}") from None


def open_package(cache: Path, fileserver: FileServer, package: str, sha256: str, *, keep: int = KEEP) -> int:
    """`cached_package`, opened (a file descriptor, read-only): the caller serves the file it holds, even
    if another fetch evicts the name before the answer is sent (adv53). Evicted between the cache's
    answer and the open, it is asked for again (fetched again); three times evicted is CacheRefused."""
    for _attempt in range(3):
        path = cached_package(cache, fileserver, package, sha256, keep=keep)
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CacheRefused(f"package cache {cache}: cannot open {path.name}: {exc.strerror}") from None
    raise CacheRefused(f"package cache {cache}: {package[:120]} evicted three times before it was served")


def _cached(cache: Path, fileserver: FileServer, package: str, sha256: str, keep: int) -> Path:
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = cache / f"{sha256}{SUFFIX}"
    if _hit(path, sha256, check=False):  # a copy this process has checked: no lock, no hashing
        return path
    with _locked(cache / f"{sha256}.lock"):
        if _hit(path, sha256, check=True):  # fetched by whoever held the lock, or kept from before
            return path
        for stale in cache.glob(f"{FETCHING}{sha256}-*"):  # a fetch killed mid-way (we hold its lock)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            _fetch(cache, fileserver, package, sha256, path)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # Disk full: the kept copies make room (a stream still reading one keeps its bytes until it
            # ends). Evicting only after a fetch succeeded, a full disk refused every new package.
            _evict(cache, 1, path)
            _fetch(cache, fileserver, package, sha256, path)
        _served(path)
    _evict(cache, keep, path)
    _sweep(cache)
    return path


def _fetch(cache: Path, fileserver: FileServer, package: str, sha256: str, path: Path) -> None:
    """Fetch `package` into a private directory, check it against the catalog, move it to `path`."""
    work = Path(tempfile.mkdtemp(prefix=f"{FETCHING}{sha256}-", dir=cache))
    try:
        got = fileserver.download(package, work / "package", sha256=sha256)
        if sha256_of(got) != sha256:  # the catalog's word, whatever the file server class checked
            raise CacheRefused(f"{package[:120]}: SHA-256 differs from the release catalog's")
        with got.open("rb") as written:  # on the disk before it has the name (a power cut)
            os.fsync(written.fileno())
        os.replace(got, path)
        _fsync_dir(cache)
        _checked(path.lstat())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The copies this process wrote or hashed, by (device, inode, size, mtime): a file that changed since
# (or another one under the name) is hashed again before it is served. The package's mtime is not
# touched by serving it (`_served`), so a checked copy stays checked.
_CHECKED: set[tuple[int, int, int, int]] = set()
_CHECKED_LOCK = threading.Lock()


def _identity(found: os.stat_result) -> tuple[int, int, int, int]:
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def _checked(found: os.stat_result) -> None:
    with _CHECKED_LOCK:
        _CHECKED.add(_identity(found))


def _hit(path: Path, sha256: str, *, check: bool) -> bool:
    """Whether `path` is a kept package (renewed as the most recently served: the last to be evicted).
    Only a regular file is one: a symlink or anything else planted under the name is removed and the
    package fetched, never whatever it points to served under the release's name. A copy this process
    did not write or check itself (kept from before a restart, written by another worker, changed on
    disk since) is one only once its SHA-256 is the catalog's (`check`, under the package's lock): a
    file cut short by a power cut, or damaged or altered since, is removed and fetched again (adv53)."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(found.st_mode):
        path.unlink()  # a directory there raises: CacheRefused names the cache
        return False
    with _CHECKED_LOCK:
        known = _identity(found) in _CHECKED
    if not known:
        if not check:
            return False
        if sha256_of(path) != sha256:
            log.warning("package cache: %s is not the package its name says; fetched again", path)
            path.unlink()
            return False
        _checked(found)
    _served(path)
    return True


def _served(path: Path) -> None:
    """Stamp `path` as served now, on its lock file: the package's own mtime is its Last-Modified (and
    Starlette's ETag), which must stay put for a cut download to resume with If-Range (adv53)."""
    stamp = path.with_suffix(".lock")
    fd = os.open(stamp, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def _sweep(cache: Path) -> None:
    """Remove what fetches killed mid-way (kill -9, OOM, a restart) left: `.fetch-<sha256>-*` whose
    package lock nobody holds. Eviction only counts `*.pkg`, so each was a partial package for ever."""
    for work in cache.glob(f"{FETCHING}*"):
        sha256 = work.name[len(FETCHING) :].split("-", 1)[0]
        if not SHA256.fullmatch(sha256):
            continue
        with _locked(cache / f"{sha256}.lock", wait=False) as ours:
            if ours:
                shutil.rmtree(work, ignore_errors=True)


def _evict(cache: Path, keep: int, current: Path) -> None:
    """Remove all but the `keep` most recently served packages (never `current`). Lock files stay (a few
    bytes per package ever served): removing one another process waits on would let two fetch at once."""

    def served(entry: Path) -> float:  # stamped on its lock file (`_served`)
        try:
            return entry.with_suffix(".lock").stat().st_mtime
        except FileNotFoundError:
            return 0.0

    entries = sorted((p for p in cache.glob(f"*{SUFFIX}") if p != current), key=served, reverse=True)
    for entry in entries[max(keep - 1, 0) :]:
        entry.unlink(missing_ok=True)
