"""Tunnel ports of two labs on one machine (pytest-xdist workers) never coincide: a lab's tunnel port
is unbound while its customer's tunnel is closed, and another lab that drew the same port opened its
own tunnel on it; the run then reached the other lab's node (refused for its host key) instead of
finding the tunnel closed. Real ports and the machine's real reservation notes."""

from __future__ import annotations

from pathlib import Path

from upkeep.lab import procs


def test_two_labs_never_hold_the_same_tunnel_port_and_a_released_one_is_free_again(tmp_path: Path) -> None:
    first, second = tmp_path / "lab-1", tmp_path / "lab-2"
    first.mkdir()
    second.mkdir()
    try:
        # 300 of the ~12,700 ports each: drawn independently, they would share ~7 on average.
        held = procs.reserved_free_ports(300, owner=first)
        other = procs.reserved_free_ports(300, owner=second)
        assert len(set(held)) == len(set(other)) == 300
        assert not set(held) & set(other)
        procs.release_ports(first)
        procs.release_ports(second)
        again = set(procs.reserved_free_ports(300, owner=second)) | set(
            procs.reserved_free_ports(300, owner=first)
        )
        assert again & (set(held) | set(other))  # given back: drawn again (~14 expected of 600)
    finally:
        procs.release_ports(first)
        procs.release_ports(second)
