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
  its file's mtime). An evicted package is fetched again when asked for. A request streaming a file
  that is then removed keeps reading it (POSIX keeps an open file), and the file just served is the
  newest, never the one evicted.

The portal serves the file with Starlette's FileResponse (HEAD and Range answered from disk).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.fileserver import FileServer, sha256_of

SHA256 = re.compile(r"[0-9a-f]{64}")
SUFFIX = ".pkg"
KEEP = 4


class CacheRefused(Exception):
    """The catalog's SHA-256 for a package is not one (a cache file cannot be named by it)."""


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_package(
    cache: Path, fileserver: FileServer, package: str, sha256: str, *, keep: int = KEEP
) -> Path:
    """The verified local copy of `package` (catalog SHA-256 `sha256`), fetched first if not there."""
    if not SHA256.fullmatch(sha256):
        raise CacheRefused(
            f"release catalog: SHA-256 {sha256[:80]!r} of {package[:120]!r} is not 64 hex digits"
        )
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = cache / f"{sha256}{SUFFIX}"
    if _hit(path):
        return path
    with _locked(cache / f"{sha256}.lock"):
        if _hit(path):  # fetched by whoever held the lock
            return path
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
        try:
            got = fileserver.download(package, work / "package", sha256=sha256)
            if sha256_of(got) != sha256:  # the catalog's word, whatever the file server class checked
                raise CacheRefused(f"{package[:120]}: SHA-256 differs from the release catalog's")
            os.replace(got, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _evict(cache, keep, path)
    return path


def _hit(path: Path) -> bool:
    try:
        os.utime(path)  # most recently served: the last to be evicted
    except FileNotFoundError:
        return False
    return True


def _evict(cache: Path, keep: int, current: Path) -> None:
    """Remove all but the `keep` most recently served packages (never `current`). Lock files stay (a few
    bytes per package ever served): removing one another process waits on would let two fetch at once."""

    def served(entry: Path) -> float:
        try:
            return entry.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    entries = sorted((p for p in cache.glob(f"*{SUFFIX}") if p != current), key=served, reverse=True)
    for entry in entries[max(keep - 1, 0) :]:
        entry.unlink(missing_ok=True)
