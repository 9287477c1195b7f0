"""Network faults on 127.0.0.1 that the tests control: a TCP proxy that can cut every connection
through it or go down for a while (refusing or blackholing), and a blackhole (a listening socket that
never answers)."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from typing import Literal, Self

OutageMode = Literal["refuse", "blackhole"]


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>, one pump thread per connection.
    `cut()` resets every live connection at once (RST to both ends, as when a firewall or a NAT
    drops the flow); new connections are forwarded again afterwards.

    `down(mode)` also takes the service away until `up()`: "refuse" makes new connections fail with
    ECONNREFUSED (the server process is gone), "blackhole" accepts them and never answers (a partition
    or a dead host behind a load balancer); `held` are the connections a blackhole sits on."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._live: list[tuple[socket.socket, socket.socket, threading.Event, threading.Thread]] = []
        self._lock = threading.Lock()
        self.connections = 0
        self.cuts = 0
        self.held: list[socket.socket] = []
        self.mode: OutageMode | None = None
        self._listening = threading.Event()
        self._listening.set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            self._listening.wait()
            listener = self._listener
            try:
                client, _ = listener.accept()
            except OSError:
                if self._closed:
                    return
                continue  # `down("refuse")` closed it under us: wait for `up()`
            if self.mode == "blackhole":
                with self._lock:
                    self.held.append(client)  # accepted by the kernel, never answered
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            stop = threading.Event()
            pump = threading.Thread(target=self._pump, args=(client, upstream, stop), daemon=True)
            with self._lock:
                self.connections += 1
                self._live.append((client, upstream, stop, pump))
            pump.start()

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket, stop: threading.Event) -> None:
        """Both directions in one thread (select with a short timeout), so that `cut` can stop it and
        then be the only user of the sockets: only then does close() reset the connection at once."""
        peers = {client: upstream, upstream: client}
        try:
            while not stop.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            if not stop.is_set():  # ended by one side: pass the orderly close on
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        """Reset every connection through the proxy; returns how many were cut."""
        with self._lock:
            live, self._live = self._live, []
            self.cuts += 1
        for _client, _upstream, stop, pump in live:
            stop.set()
            pump.join(2)
        for client, upstream, _stop, _pump in live:
            _reset(client)
            _reset(upstream)
        return len(live)

    def down(self, mode: OutageMode = "refuse") -> int:
        """Take the service away: reset every live connection and turn new ones away as `mode` says.
        Returns how many live connections were reset."""
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"unknown outage mode {mode!r}: 'refuse' or 'blackhole'")
        self.mode = mode
        if mode == "refuse":
            # A socket bound to the port but not listening: the kernel answers SYN with RST (refused),
            # and holding the binding keeps the port from being handed out to anyone else meanwhile.
            self._listening.clear()
            old, placeholder = self._listener, socket.socket()
            with contextlib.suppress(OSError):
                old.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone does not)
            old.close()
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            placeholder.bind(("127.0.0.1", self.port))
            self._listener = placeholder
        return self.cut()

    def up(self) -> None:
        """Forward again; connections held by a blackhole are reset, as a recovered path would."""
        if self.mode == "refuse":
            self._listener.listen(128)
            self._listening.set()
        with self._lock:
            held, self.held = self.held, []
        for sock in held:
            _reset(sock)
        self.mode = None

    def outage(self, seconds: float, mode: OutageMode = "refuse") -> threading.Thread:
        """`down(mode)` now and `up()` after `seconds`, in a thread (join it to wait for the end)."""
        self.down(mode)

        def restore() -> None:
            time.sleep(seconds)
            self.up()

        thread = threading.Thread(target=restore, name=f"proxy-{self.port}-outage", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._closed = True
        self._listening.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()
        with self._lock:
            held, self.held = self.held, []
        for sock in held:
            _reset(sock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        # SO_LINGER 0: close() sends RST, so both ends see the connection die at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class Blackhole:
    """A port that completes TCP handshakes (the kernel's backlog) and then says nothing, ever: what a
    half-dead host or a silently dropping middlebox looks like to a client."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1)
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
