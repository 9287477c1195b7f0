"""Tunnel ports of two labs on one machine (pytest-xdist workers) never coincide: a lab's tunnel port
is unbound while its customer's tunnel is closed, and another lab that drew the same port opened its
own tunnel on it; the run then reached the other lab's node (refused for its host key) instead of
finding the tunnel closed. Real ports and the machine's real reservation notes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

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


# -- adversarial pass (adv23): the notes themselves ----------------------------------------------------
def _private_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp dir of this test's own, so the notes written here are not the machine's."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"upkeep-lab-ports-{os.getuid()}"


def test_a_port_another_lab_holds_is_never_handed_out_even_to_a_caller_without_a_lab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portal's tests ask for a port with no lab of their own: before, that path ignored the notes
    and could take a port whose lab's tunnel was closed for the moment."""
    notes = _private_notes(tmp_path, monkeypatch)
    lab = tmp_path / "lab"
    lab.mkdir()
    procs.reserved_free_ports(1, owner=lab)  # creates the directory
    open_ports = set(range(20000, 20000 + 12768))
    kept = set(random.sample(sorted(open_ports), 40))
    for port in open_ports - kept:
        (notes / str(port)).write_text(str(lab.resolve()))
    assert set(procs.reserved_free_ports(5)) <= kept


def test_notes_that_are_not_a_lab_s_hold_nothing_and_break_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = _private_notes(tmp_path, monkeypatch)
    lab = tmp_path / "lab"
    lab.mkdir()
    procs.reserved_free_ports(1, owner=lab)
    (notes / "20001").mkdir()
    (notes / "20002").write_bytes(b"\xff\xfe")
    (notes / "20003").write_text("")
    (notes / "20004").write_text("relative/root")
    assert len(procs.reserved_free_ports(3, owner=lab)) == 3
    procs.release_ports(lab)


def test_a_notes_directory_open_to_others_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notes = _private_notes(tmp_path, monkeypatch)
    notes.mkdir(mode=0o777)
    notes.chmod(0o777)
    lab = tmp_path / "lab"
    lab.mkdir()
    with pytest.raises(OSError, match="not a private directory"):
        procs.reserved_free_ports(1, owner=lab)
    assert list(notes.iterdir()) == []
