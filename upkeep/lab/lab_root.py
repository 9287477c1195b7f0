"""`LabRoot`: where a lab lives on disk - the paths under its root, its state file (lab.json), the lock
that serialises up/down/fault across processes, and the sshd spec of every node and the jump host.
`Lab` (upkeep.lab.lab) builds on it with the lifecycle, faults and views.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from upkeep.lab import procs, sshd
from upkeep.lab.fileserver import FileServer


class LabError(RuntimeError):
    """The lab could not do what was asked; the message says why (and shows daemon log tails)."""


class LabRoot:
    """A lab's root directory: its paths, state file and lock, its nodes and their sshd specs."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.inventory_path = self.root / "inventory.yaml"
        self.fileserver = FileServer(self.root / "fileserver")
        self.fileserver_root = self.fileserver.root
        self.known_hosts = self.root / "known_hosts"
        self.ssh_key = self.root / "id_ed25519"
        self._state_file = self.root / "lab.json"

    # -- state ---------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return None
        return data

    def _save(self, state: dict[str, Any]) -> None:
        # Holds the file server password: 0600 from the first byte, replaced atomically.
        tmp = self._state_file.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=2)
        os.replace(tmp, self._state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One up/down/fault at a time per lab root, across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def node_dir(self, hostname: str) -> Path:
        self._node(hostname)
        return self.root / "nodes" / hostname

    def _node(self, hostname: str) -> dict[str, Any]:
        nodes = (self._state() or {}).get("nodes", [])
        for entry in nodes:
            if entry["hostname"] == hostname:
                return dict(entry)
        known = ", ".join(n["hostname"] for n in nodes) or "none - is the lab up?"
        raise LabError(f"unknown node {hostname!r} (nodes: {known})")

    def _spec(self, hostname: str | None, user: str) -> sshd.SshdSpec:
        if hostname is None:
            state_dir = self.root / "jump"
            return sshd.SshdSpec("jump", state_dir, user, state_dir / "authorized_keys", self.root / "bin")
        node_dir = self.root / "nodes" / hostname
        state_dir = node_dir / "sshd"
        return sshd.SshdSpec(
            hostname, state_dir, user, state_dir / "authorized_keys", self.root / "bin", node_dir
        )

    def _tunnel_spec(self, user: str, ports: tuple[int, ...] = ()) -> sshd.SshdSpec:
        """The vendor's tunnel server (`up --access tunnel`); `ports`: the node ports it may forward."""
        state_dir = self.root / "tunnel"
        return sshd.SshdSpec(
            "tunnel", state_dir, user, state_dir / "authorized_keys", self.root / "bin", tunnel_ports=ports
        )

    def _all_specs(self) -> list[sshd.SshdSpec]:
        """Every sshd that may exist, including ones a half-finished `up` never recorded."""
        user = getpass.getuser()
        names = {n["hostname"] for n in (self._state() or {}).get("nodes", [])}
        nodes = self.root / "nodes"
        if nodes.is_dir():
            names.update(p.name for p in nodes.iterdir() if (p / "sshd").is_dir())
        return [
            self._spec(None, user),
            self._tunnel_spec(user),
            *(self._spec(name, user) for name in sorted(names)),
        ]

    def _running(self) -> bool:
        return self.fileserver.pid() is not None or any(
            procs.read_pid(s.pidfile, str(s.conf)) for s in self._all_specs()
        )
