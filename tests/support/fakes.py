"""Fakes for the flows' outside world, each behind the protocol the flows depend on.

* `FakeFleet` (a `tasks.ssh.NodeConnector`) hands out `FakeRunner`s (`RemoteRunner`) to `FakeNode`s,
  which answer the agent's vocabulary (`upkeep-agent version|health|disk|stage|upgrade`) the way the
  lab's agent does (upkeep/lab/agent.py): the answer on stdout, a failure on stderr with its exit code.
* `FakeFileServer` (`tasks.fileserver.FileServer`): packages held in memory, SHA-256 checked on download.
* `FakeMailTransport` (`tasks.mail.MailTransport`): keeps what it was handed.
* `FakeClock` (`flows.runtime.Clock`): a wall clock that moves only when told.

Faults are set per node or path (`fail`, `unhealthy`, `unreachable`...), and `before` hooks run just
before an agent command, so a test can act "while node 1 is being upgraded" (ask for a pause, move the
clock, take the run over) with no thread and no sleep. Only unit tests use these; everything else runs
against the lab's real sshd nodes and nginx.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tasks.fileserver import ChecksumMismatch, FileServerError, safe_remote_path
from tasks.mail import OutgoingMessage
from tasks.node import AGENT
from tasks.ssh import RemoteError, RemoteResult, SshTarget


@dataclass
class FakeNode:
    """One product node. `fail[command] = (exit, stderr)` makes that agent command fail;
    `before[command]` is called (with the node) right before that command is answered."""

    hostname: str
    version: str
    healthy: bool = True
    disk_free: int = 10**12
    # What `upgrade` leaves behind: a node whose service does not come back is unhealthy after it.
    healthy_after_upgrade: bool = True
    reports_after_upgrade: str | None = None  # a version other than the target: verify catches it
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)
    before: dict[str, Callable[[FakeNode], None]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # what was put on the node, by remote name
    staged: list[str] = field(default_factory=list)  # the names of packages staged (verified)
    commands: list[list[str]] = field(default_factory=list)
    upgrades: list[str] = field(default_factory=list)  # one entry per upgrade actually carried out

    def answer(self, argv: Sequence[str]) -> tuple[int, str, str]:
        if not argv or argv[0] != AGENT:
            return 127, "", f"{argv[0] if argv else ''}: command not found"
        args = list(argv[1:])
        self.commands.append(args)
        command = args[0] if args else ""
        if command in self.before:
            self.before[command](self)
        if command in self.fail:
            code, why = self.fail[command]
            return code, "", why
        match args:
            case ["version"]:
                return 0, self.version + "\n", ""
            case ["health"]:
                return (0, "healthy\n", "") if self.healthy else (1, "", "unhealthy: simulated fault")
            case ["disk"]:
                return 0, f"{self.disk_free}\n", ""
            case ["stage", name, sha256]:
                return self._stage(name, sha256)
            case ["upgrade", target]:
                return self._upgrade(target)
            case ["logs", "collect", "--since", _, "--until", _]:
                return self._collect()
        return 64, "", f"usage: {AGENT} version|health|disk|stage|upgrade|logs collect"

    def _stage(self, name: str, sha256: str) -> tuple[int, str, str]:
        data = self.files.get(name)
        if data is None:
            return 66, "", f"no such package: {name}"
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            return 2, "", f"checksum mismatch: expected {sha256} got {digest}"
        self.staged.append(name)
        return 0, f"staged {name}\n", ""

    def _collect(self) -> tuple[int, str, str]:
        """A diagnostics archive (as the real agent packs one): the node's upgrade history."""
        log = "".join(f"upgrade to {version}\n" for version in self.upgrades).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            member = tarfile.TarInfo("upgrades.log")
            member.size = len(log)
            tar.addfile(member, io.BytesIO(log))
        remote = f"/var/lib/upkeep-agent/outgoing/diag-{self.hostname}-{len(self.commands)}.tar.gz"
        self.files[remote] = buffer.getvalue()
        return 0, remote + "\n", ""

    def _upgrade(self, target: str) -> tuple[int, str, str]:
        if self.version == target:
            return 0, f"already at {target}\n", ""
        if not self.staged:
            return 4, "", f"not staged: {target}"
        old = self.version
        self.version = self.reports_after_upgrade or target
        self.healthy = self.healthy_after_upgrade
        self.upgrades.append(target)
        return 0, f"upgraded {old} -> {target}\n", ""


class FakeRunner:
    """A `RemoteRunner` on one `FakeNode` (what `FabricRunner` is on a real one)."""

    def __init__(self, node: FakeNode, fleet: FakeFleet) -> None:
        self.host = node.hostname
        self.node, self._fleet = node, fleet
        self.closed = False

    def run(self, argv: Sequence[str], *, timeout: float) -> RemoteResult:
        self._reachable()
        code, out, err = self.node.answer(argv)
        return RemoteResult(self.host, " ".join(argv), code, out, err, 0.0)

    def put(self, local: Path, remote: str) -> None:
        self._reachable()
        self.node.files[remote] = local.read_bytes()

    def get(self, remote: str, local: Path) -> None:
        self._reachable()
        if remote not in self.node.files:
            raise RemoteError(self.host, f"download of {remote} failed: no such file")
        local.write_bytes(self.node.files[remote])

    def close(self) -> None:
        self.closed = True

    def _reachable(self) -> None:
        if self.host in self._fleet.unreachable:
            raise RemoteError(self.host, "cannot connect: [Errno 111] Connection refused")


@dataclass
class FakeFleet:
    """A `NodeConnector`: every node a flow may reach, by hostname. Hostnames in `unreachable` refuse
    connections; `connected` counts connections opened per node (one per node and run is expected)."""

    nodes: dict[str, FakeNode] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    connected: dict[str, int] = field(default_factory=dict)
    runners: list[FakeRunner] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, hostname: str, version: str) -> FakeNode:
        node = self.nodes[hostname] = FakeNode(hostname, version)
        return node

    def connect(self, target: SshTarget) -> FakeRunner:
        node = self.nodes.get(target.name)
        if node is None:
            raise RemoteError(target.name, "cannot connect: no such node in the fake fleet")
        with self._lock:
            self.connected[target.name] = self.connected.get(target.name, 0) + 1
            runner = FakeRunner(node, self)
            self.runners.append(runner)
        return runner


@dataclass
class FakeFileServer:
    """A `FileServer` holding files in memory. `failing[path]` makes every request for it fail."""

    files: dict[str, bytes] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)
    downloads: list[str] = field(default_factory=list)

    def add(self, path: str, data: bytes) -> str:
        """Store `data` at `path`; returns its SHA-256."""
        self.files[safe_remote_path(path)] = data
        return hashlib.sha256(data).hexdigest()

    def _get(self, path: str, what: str) -> bytes:
        path = safe_remote_path(path)
        if path in self.failing:
            raise FileServerError(f"{what} of {path}: {self.failing[path]}")
        if path not in self.files:
            raise FileServerError(f"{what} of {path}: HTTP 404 not found")
        return self.files[path]

    def download(self, path: str, dest: Path, *, sha256: str) -> Path:
        data = self._get(path, "download")
        self.downloads.append(path)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(f"{path}: SHA-256 is {actual}, expected {sha256}; package discarded")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        part.write_bytes(data)
        part.replace(dest)
        return dest

    def upload(self, local: Path, path: str) -> str:
        path = safe_remote_path(path)
        if path in self.files:
            raise FileServerError(f"{path} already exists on the file server: not overwritten")
        self.files[path] = local.read_bytes()
        return f"fake://fileserver/{path}"

    def size(self, path: str) -> int:
        return len(self._get(path, "size of"))

    def fetch_text(self, path: str) -> str:
        return self._get(path, "read").decode()


@dataclass
class FakeMailTransport:
    """A `MailTransport` that keeps every message; `fail_with` is raised instead when set."""

    sent: list[OutgoingMessage] = field(default_factory=list)
    fail_with: Exception | None = None

    def send(self, message: OutgoingMessage) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(message)


@dataclass
class FakeClock:
    """A `Clock` standing at `now` until moved (`advance`, or `now = ...`)."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now
