"""Network faults on 127.0.0.1 that the tests control: a TCP proxy that can cut every connection
through it, and a blackhole (a listening socket that never answers)."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from typing import Self


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>, one pump thread per connection.
    `cut()` resets every live connection at once (RST to both ends, as when a firewall or a NAT
    drops the flow); new connections are forwarded again afterwards."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._live: list[tuple[socket.socket, socket.socket, threading.Event, threading.Thread]] = []
        self._lock = threading.Lock()
        self.connections = 0
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
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
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    # SO_LINGER 0: close() sends RST, so both ends see the connection die at once.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
        return len(live)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


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
