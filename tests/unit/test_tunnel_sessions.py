"""The tunnel server's reporter (tasks/tunnel_sessions.py) on a made-up /proc: which loopback ports the
tunnel server's own sshd processes listen on, and since when."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.tunnel_sessions import sessions

BOOT = 1_800_000_000
TICKS = os.sysconf("SC_CLK_TCK")


Process = tuple[int, str, int, list[int]]


def _proc(tmp_path: Path, processes: dict[int, Process], listening: dict[int, int]) -> Path:
    """processes: pid -> (parent pid, command, start in seconds after boot, socket inodes it holds);
    listening: socket inode -> loopback port."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    rows = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode"]
    rows += [
        f"   {n}: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 {inode}"
        for n, (inode, port) in enumerate(listening.items())
    ]
    (proc / "net" / "tcp").write_text("\n".join(rows) + "\n")
    (proc / "stat").write_text(f"cpu  1 2 3\nbtime {BOOT}\n")
    for pid, (parent, comm, start, inodes) in processes.items():
        (proc / str(pid) / "fd").mkdir(parents=True)
        fields = ["S", str(parent)] + ["0"] * 17 + [str(start * TICKS)]
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
        for n, inode in enumerate(inodes):
            os.symlink(f"socket:[{inode}]", proc / str(pid) / "fd" / str(n + 3))
    return proc


def test_only_the_tunnel_servers_own_sshd_sessions_are_reported(tmp_path: Path) -> None:
    proc = _proc(
        tmp_path,
        {
            1: (0, "init", 0, []),
            10: (1, "sshd", 5, [900]),  # the tunnel server, listening on its own port
            11: (10, "sshd", 100, []),  # a customer node's connection (privileged part)
            12: (11, "sshd", 101, [901]),  # ... holding its reverse tunnel's listener
            13: (10, "sshd", 200, []),  # Upkeep's connection
            14: (13, "sshd", 201, []),
            15: (14, "python3", 202, []),  # this reporter, run as the forced command
            20: (1, "sshd", 7, [902]),  # another sshd on the same host (a node's, port 22...)
        },
        {900: 2222, 901: 41001, 902: 41002},
    )
    found = sessions(proc, me="15")
    assert [(t["port"], t["pid"]) for t in found] == [(2222, 10), (41001, 12)]
    assert found[1]["since"] == "2027-01-15T08:01:41Z"
    # Run by hand, not under sshd: every sshd on the host is looked at.
    assert [t["port"] for t in sessions(proc, me="1")] == [2222, 41001, 41002]
