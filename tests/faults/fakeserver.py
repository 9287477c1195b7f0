"""A tiny HTTPS file server (http.server + a CA-issued cert) whose faults a test sets per path:
an HTTP status, a hang, or a connection cut half-way through the body. It serves files from a
directory with basic auth and Range support, and records every request it saw."""

from __future__ import annotations

import base64
import contextlib
import http.server
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from upkeep.lab.fileserver import write_certs


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    authorized: bool


def make_ca(directory: Path) -> Path:
    """A CA and a 127.0.0.1 server cert it signed (ca.pem, server.pem, server-key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_certs(directory)
    return directory


@dataclass
class FakeFileServer:
    root: Path
    certs: Path  # from make_ca
    user: str = "upkeep"
    password: str = "right-password"
    tls: bool = True
    faults: dict[str, str] = field(default_factory=dict)  # path -> "status:500" | "hang" | "cut-once"
    seen: list[Seen] = field(default_factory=list)
    port: int = 0  # 0: any free port; a closed server's port to stand in for it (a restart)

    def __post_init__(self) -> None:
        self._release = threading.Event()
        self._cut_done: set[str] = set()
        self._open: set[Any] = set()  # client connections, cut by close() as a server restart would
        handler = _handler(self)
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.certs / "server.pem", self.certs / "server-key.pem")
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.certs / "ca.pem"

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for connection in list(self._open):
            with contextlib.suppress(OSError):
                connection.shutdown(2)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _handler(server: FakeFileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            server._open.add(self.connection)

        def finish(self) -> None:
            server._open.discard(self.connection)
            super().finish()

        def _authorized(self) -> bool:
            expected = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
            return self.headers.get("Authorization", "") == f"Basic {expected}"

        def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            authorized = self._authorized()
            server.seen.append(Seen(self.command, path, self.headers.get("Range"), authorized))
            if not authorized:
                self._reply(401, b"unauthorized", {"WWW-Authenticate": 'Basic realm="fake"'})
                return
            fault = server.faults.get(path, "")
            if fault.startswith("status:"):
                code = int(fault.split(":", 1)[1])
                self._reply(code, f"fault {code}".encode())
                return
            if fault == "hang":
                server._release.wait(60)
                return
            file = server.root / path
            if not file.is_file():
                self._reply(404, b"not found")
                return
            data = file.read_bytes()
            wanted = self.headers.get("Range")
            if wanted:
                start = int(wanted.removeprefix("bytes=").split("-", 1)[0])
                if start >= len(data):
                    self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                body = data[start:]
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                self._reply(206, body, headers)
                return
            if fault == "cut-once" and path not in server._cut_done:
                server._cut_done.add(path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                self.close_connection = True
                return
            self._reply(200, data)

    return Handler
