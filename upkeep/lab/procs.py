"""Process plumbing for the lab: free ports, pid files, readiness probes, stopping a process tree.

Daemons (sshd, nginx) are found only through pid files the lab wrote, and a pid is trusted only while
/proc/<pid>/cmdline still names the lab's own config file: a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

LOCALHOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out; all sockets stay open until the end so the ports are distinct."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOCALHOST, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _reservations() -> Path:
    """Where labs on this machine note the tunnel ports they hold (one file per port, naming its lab)."""
    import tempfile

    path = Path(tempfile.gettempdir()) / f"upkeep-lab-ports-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def _reservations_locked() -> Iterator[Path]:
    import fcntl

    path = _reservations()
    with open(path / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def reserved_free_ports(
    count: int, low: int = 20000, exclude: Iterable[int] = (), owner: Path | None = None
) -> list[int]:
    """Distinct ports free now, drawn at random from below the kernel's ephemeral range (never handed
    out for port 0 or an outgoing connection), none of `exclude` (ports already given out, free only
    until their owner binds them). For ports bound long after they are chosen - a node's
    tunnel port stays unbound until the customer opens the tunnel - an ephemeral one was taken meanwhile
    by another lab's sshd on this machine (seen: `remote port forwarding failed` at `tunnel start`).

    With `owner` (a lab's root), the ports are also noted as that lab's for every other lab on this
    machine until `release_ports(owner)`: two labs (pytest-xdist workers) drew the same port, and while
    one lab's tunnel was closed the other's opened on it, so a run reached the other lab's node and
    was refused for its host key instead of finding the tunnel closed (seen once in six full runs).
    A note whose lab's root is gone (a lab killed, its directory removed) is taken back."""
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        high = 32768
    taken = set(exclude)
    pool = range(low, max(high, low + 4 * count))
    candidates = random.sample(pool, k=min(4 * count + 64 + len(taken), len(pool)))
    found: list[int] = []
    with _reservations_locked() if owner is not None else contextlib.nullcontext() as notes:
        for port in candidates:
            if port in taken or (notes is not None and not _may_note(notes / str(port))):
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((LOCALHOST, port))
                except OSError:
                    continue
            found.append(port)
            if len(found) == count:
                if notes is not None:
                    for chosen in found:
                        (notes / str(chosen)).write_text(str(owner))
                return found
    raise OSError(f"no {count} free ports between {low} and {high}")


def _may_note(note: Path) -> bool:
    """No lab holds the port, or the lab that noted it is gone."""
    try:
        holder = Path(note.read_text())
    except FileNotFoundError:
        return True
    return not holder.is_dir()


def release_ports(owner: Path) -> None:
    """Give back the tunnel ports `owner` (a lab's root) noted with reserved_free_ports."""
    with _reservations_locked() as notes:
        for note in notes.iterdir():
            if note.name.isdigit():
                with contextlib.suppress(OSError):
                    if note.read_text() == str(owner):
                        note.unlink()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) from /proc, or None if the pid is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def alive(pid: int | None) -> bool:
    # Daemons are reparented to PID 1, which may never reap them: a zombie counts as dead.
    if not pid:
        return False
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pidfile: Path, marker: str) -> int | None:
    """The live pid in `pidfile` whose command line mentions `marker` (our config path), else None."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) and marker in cmdline(pid) else None


def _children() -> dict[int, list[int]]:
    """ppid -> pids, read once from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    children = _children() if children is None else children
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Pids still alive after `timeout` seconds."""
    left = [p for p in pids if alive(p)]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if alive(p)]
    return left


def stop_tree(pid: int, timeout: float = 3.0) -> None:
    """Stop a daemon and everything under it (sessions, agents mid-upgrade), like a node losing power.

    Children are collected first: once the parent dies they are reparented and could not be found.
    """
    stop_trees([pid], timeout)


def stop_trees(pids: Iterable[int], timeout: float = 3.0) -> None:
    """`stop_tree` for many daemons at once: one read of /proc and one wait for all of them (a lab of
    300 nodes stopped one by one read /proc 300 times and waited 300 times: ~20 s)."""
    children = _children()
    tree = [p for pid in pids for p in (pid, *descendants(pid, children))]
    _signal(tree, signal.SIGTERM)
    left = wait_gone(tree, timeout)
    if left:
        _signal(left, signal.SIGKILL)
        left = wait_gone(left, 2.0)
    if left:
        raise OSError(f"processes {left} survived SIGKILL")


def ssh_banner(port: int, timeout: float = 1.0) -> str | None:
    """The SSH identification line on 127.0.0.1:port, or None if nothing speaks SSH there (yet)."""
    try:
        with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].strip().decode(errors="replace")
    return line if line.startswith("SSH-2.0-") else None


def tls_ready(port: int, cafile: Path, timeout: float = 1.0) -> bool:
    """True once 127.0.0.1:port completes a TLS handshake with a cert chaining to `cafile`."""
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with (
            socket.create_connection((LOCALHOST, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=LOCALHOST),
        ):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log at {path})"
