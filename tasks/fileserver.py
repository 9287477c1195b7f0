"""The vendor's secure file server: release packages down, diagnostics bundles up (httpx).

Downloads stream to disk, resume with HTTP Range after a cut, and are SHA-256 verified before anyone
may use them. Uploads stream from disk and never overwrite an existing file. TLS is verified against
the configured CA; plain http is refused unless explicitly allowed (lab/dev).
"""

from __future__ import annotations

import hashlib
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from tasks.failpoints import failpoint

CHUNK = 1 << 20
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class FileServerError(Exception):
    """The file server refused or failed a request; the message says which and why."""


class ChecksumMismatch(FileServerError):
    pass


class FileServer(Protocol):
    """The vendor's file server as flows, the CLI and the portal use it (HttpFileServer; a fake in
    unit tests). Every failure is a FileServerError."""

    def download(self, path: str, dest: Path, *, sha256: str) -> Path: ...

    def upload(self, local: Path, path: str) -> str: ...

    def size(self, path: str) -> int: ...

    def fetch_text(self, path: str) -> str: ...


def safe_remote_path(path: str) -> str:
    """A relative path of plain segments: no absolute paths, `..`, empty segments or odd characters."""
    if not _SAFE_PATH.fullmatch(path) or any(seg in (".", "..") for seg in path.split("/")):
        raise FileServerError(f"file-server path {path[:120]!r} is not a plain relative path")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class HttpFileServer:
    """The file server over HTTPS. One httpx client (one SSL context, one connection pool) serves
    every request of this object, from any thread; `transport` replaces httpx's network transport
    (e.g. `httpx.MockTransport` in a unit test), TLS settings then being the transport's business."""

    url: str
    user: str
    password: str = field(repr=False)
    ca: Path | None = None
    allow_http: bool = False
    timeout: float = 30.0
    transport: httpx.BaseTransport | None = field(default=None, repr=False)
    _http: httpx.Client | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _ca_seen: tuple[int, int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.url.startswith("http://") and not self.allow_http:
            raise FileServerError(
                f"file server {self.url} is plain http: refused (set fileserver_allow_http for a lab)"
            )
        if not self.url.startswith(("https://", "http://")):
            raise FileServerError(f"file server URL {self.url!r} must be https://")
        if self.ca is not None and not self.ca.is_file():
            raise FileServerError(f"file-server CA {self.ca} does not exist")

    def _ca_stamp(self) -> tuple[int, int, int] | None:
        """What identifies the CA file's content now: a rotated CA written to the same path changes it."""
        if self.ca is None:
            return None
        try:
            stat = self.ca.stat()
        except OSError:
            return None  # gone for now: keep what was loaded; the next change is seen again
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _trust(self) -> ssl.SSLContext | bool:
        """The configured CA as an SSL context; a file that is not a readable PEM CA (half-written
        during a rotation, the key instead of the certificate) is one FileServerError naming it."""
        if self.ca is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.ca))
        except (ssl.SSLError, OSError) as exc:
            raise FileServerError(
                f"file-server CA {self.ca}: cannot be used as a CA certificate: {exc} (check fileserver_ca)"
            ) from None

    def _client(self) -> httpx.Client:
        """The one client, made at the first request (building a Runtime opens no connection), and
        made again when the CA file changed: a long-running dispatcher or portal trusts a rotated CA
        without a restart, as it did when every request read the CA."""
        stamp = self._ca_stamp()
        with self._lock:
            if self._http is not None and stamp is not None and stamp != self._ca_seen:
                # Not closed here: a download on another thread may still be reading from it. Its
                # connections close when the last request using it ends and it is collected.
                self._http = None
            if self._http is None:
                self._ca_seen = stamp
                self._http = httpx.Client(
                    base_url=self.url.rstrip("/") + "/",
                    auth=httpx.BasicAuth(self.user, self.password),
                    verify=self._trust(),
                    timeout=httpx.Timeout(self.timeout),
                    follow_redirects=False,
                    transport=self.transport,
                )
            return self._http

    def close(self) -> None:
        """Close the client's connections; a later request opens new ones."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def download(self, path: str, dest: Path, *, sha256: str) -> Path:
        """Fetch `path` to `dest`, resuming a partial `.part` file, and verify its SHA-256."""
        path = safe_remote_path(path)
        if dest.is_file() and sha256_of(dest) == sha256:
            return dest  # already here and intact: nothing to fetch
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        client = self._client()
        last: Exception | None = None
        for _attempt in range(3):
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with client.stream("GET", path, headers=headers) as response:
                    if response.status_code == 416 and have:
                        break  # the partial file is already whole; the checksum decides
                    self._check(response, "download", path)
                    mode = "ab" if response.status_code == 206 else "wb"
                    with part.open(mode) as out:
                        for chunk in response.iter_bytes(CHUNK):
                            out.write(chunk)
                            out.flush()
                            failpoint("mid-download")
                break
            except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                last = exc  # a cut mid-body: retry from what we have
        else:
            raise FileServerError(
                f"download of {path} failed after 3 attempts: {last} (tried {self.where(path)};"
                " check fileserver_url)"
            )
        actual = sha256_of(part)
        if actual != sha256:
            part.unlink()
            raise ChecksumMismatch(
                f"{path}: SHA-256 is {actual}, expected {sha256}; package discarded (from {self.where(path)})"
            )
        part.replace(dest)
        return dest

    @contextmanager
    def _reaching(self, what: str, path: str) -> Iterator[None]:
        """Connection refused, reset, timed out or a certificate that does not verify: a
        FileServerError like every other file-server failure, not httpx's own exception."""
        try:
            yield
        except httpx.TransportError as exc:
            raise FileServerError(
                f"{what} of {path}: connection to {self.url} failed: {exc or type(exc).__name__}"
                f" (tried {self.where(path)}; check fileserver_url and fileserver_ca)"
            ) from None

    def upload(self, local: Path, path: str) -> str:
        """PUT `local` to `path`; refuses to overwrite. Returns the file's URL."""
        path = safe_remote_path(path)
        client = self._client()
        with local.open("rb") as handle, self._reaching("upload", path):
            response = client.put(path, content=_chunks(handle), headers={"If-None-Match": "*"})
            if response.status_code in (409, 412):
                raise FileServerError(f"{path} already exists on the file server: not overwritten")
            self._check(response, "upload", path)
        return f"{self.url.rstrip('/')}/{path}"

    def size(self, path: str) -> int:
        """The file's size in bytes, asked with HEAD (nothing is downloaded)."""
        path = safe_remote_path(path)
        client = self._client()
        with self._reaching("size", path):
            response = client.head(path)
            self._check(response, "size of", path)
            return int(response.headers.get("content-length", "0"))

    def fetch_text(self, path: str) -> str:
        path = safe_remote_path(path)
        client = self._client()
        with self._reaching("read", path):
            response = client.get(path)
            self._check(response, "read", path)
            return response.text

    def where(self, path: str) -> str:
        """The URL a request for `path` goes to (never with credentials): named in every error."""
        return f"{self.url.rstrip('/')}/{path}"

    def _check(self, response: httpx.Response, what: str, path: str) -> None:
        if response.status_code in (200, 201, 204, 206):
            return
        reason = {401: "credentials refused", 403: "forbidden", 404: "not found"}.get(
            response.status_code, response.reason_phrase
        )
        hint = {
            401: f"; as fileserver_user {self.user!r}: check fileserver_user and fileserver_password",
            404: "; check the release's package path",
        }.get(response.status_code, "")
        raise FileServerError(
            f"{what} of {path}: HTTP {response.status_code} {reason} (tried {self.where(path)}{hint})"
        )


def _chunks(handle: object) -> Iterator[bytes]:
    read = handle.read  # type: ignore[attr-defined]
    yield from iter(lambda: read(CHUNK), b"")
