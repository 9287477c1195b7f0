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
    """Where labs on this machine note the tunnel ports they hold (one file per port, naming its lab):
    a directory of this user's alone under the temp dir. One that is a symlink, another user's, or
    open to others is refused (a planted one could point the notes at any file of ours)."""
    import stat
    import tempfile

    path = Path(tempfile.gettempdir()) / f"upkeep-lab-ports-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(
            f"{path}: not a private directory of this user (uid {info.st_uid}, mode "
            f"{oct(info.st_mode & 0o7777)}); remove it and run again"
        )
    return path


@contextlib.contextmanager
def _reservations_locked() -> Iterator[Path]:
    import fcntl

    path = _reservations()
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)


def _note_of(note: Path) -> str | None:
    """The lab root a note names, or None for a note that cannot be read as one."""
    try:
        fd = os.open(note, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as file:
            return file.read(4096).decode()
    except (OSError, UnicodeDecodeError):
        return None


def _held(notes: Path) -> set[int]:
    """The ports noted by a lab whose root still exists. A note that is empty, unreadable or names a
    root that is gone (a lab killed and its directory removed) holds nothing. A lab that crashed but
    whose root remains holds its ports until its next `up` or `down` there, or the root's removal."""
    held = set()
    for note in notes.iterdir():
        if note.name.isdigit():
            root = _note_of(note)
            if root and Path(root).is_absolute() and Path(root).is_dir():
                held.add(int(note.name))
    return held


def reserved_free_ports(
    count: int, low: int = 20000, exclude: Iterable[int] = (), owner: Path | None = None
) -> list[int]:
    """Distinct ports free now, drawn at random from below the kernel's ephemeral range (never handed
    out for port 0 or an outgoing connection), none of `exclude` (ports already given out, free only
    until their owner binds them). For ports bound long after they are chosen - a node's
    tunnel port stays unbound until the customer opens the tunnel - an ephemeral one was taken meanwhile
    by another lab's sshd on this machine (seen: `remote port forwarding failed` at `tunnel start`).

    Never a port another lab on this machine holds, and with `owner` (a lab's root) the ports are held
    for it until `release_ports(owner)`: two labs (pytest-xdist workers) drew the same port, and while
    one lab's tunnel was closed the other's opened on it, so a run reached the other lab's node and
    was refused for its host key instead of finding the tunnel closed (seen once in six full runs)."""
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        high = 32768
    holder = str(owner.resolve()) if owner is not None else None
    with _reservations_locked() as notes:
        taken = set(exclude) | _held(notes)
        free = [port for port in range(low, max(high, low + 4 * count)) if port not in taken]
        found: list[int] = []
        for port in random.sample(free, k=min(4 * count + 64, len(free))):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((LOCALHOST, port))
                except OSError:
                    continue
            found.append(port)
            if len(found) == count:
                if holder is not None:
                    for chosen in found:
                        _write_note(notes / str(chosen), holder)
                return found
    raise OSError(f"no {count} free ports between {low} and {high}")


def _write_note(note: Path, holder: str) -> None:
    """Whole or not at all: written aside, then renamed over any stale note."""
    aside = note.with_name(f".{note.name}.{os.getpid()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(holder)
    os.replace(aside, note)


def release_ports(owner: Path) -> None:
    """Give back the tunnel ports `owner` (a lab's root) holds."""
    holder = str(owner.resolve())
    with _reservations_locked() as notes:
        for note in notes.iterdir():
            if note.name.isdigit() and _note_of(note) == holder:
                with contextlib.suppress(FileNotFoundError):
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
