"""The interpreter the lab's nodes run their agent with: the system's python3 unless
UPKEEP_LAB_NODE_PYTHON names another (`make coverage` does). A bad value is one line naming it, and
no wrapper is written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from upkeep.lab import node
from upkeep.lab.lab_root import LabError


def test_the_agent_wrapper_runs_the_interpreter_named_and_passes_every_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = tmp_path / "a dir" / "python's"
    chosen.parent.mkdir()
    chosen.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    chosen.chmod(0o755)
    monkeypatch.setenv("UPKEEP_LAB_NODE_PYTHON", str(chosen))
    node.install_agent(tmp_path)
    out = subprocess.run(
        [tmp_path / "bin" / "upkeep-agent", "status", "two words"], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == ["-I", "-S", str(tmp_path / "agent.py"), "status", "two words"]


def test_without_the_setting_the_agent_runs_under_the_system_python_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UPKEEP_LAB_NODE_PYTHON", raising=False)
    node.install_agent(tmp_path)
    wrapper = (tmp_path / "bin" / "upkeep-agent").read_text()
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else None
    assert python is None or f"exec {python} -I -S " in wrapper


@pytest.mark.parametrize("value", ["python3", "/nonexistent/python3", "{plain}", "/tmp"])
def test_a_value_that_is_not_an_absolute_executable_is_one_line_naming_it_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    value = value.format(plain=plain)
    monkeypatch.setenv("UPKEEP_LAB_NODE_PYTHON", value)
    with pytest.raises(LabError) as caught:
        node.install_agent(tmp_path)
    assert str(caught.value) == (
        f"UPKEEP_LAB_NODE_PYTHON={value!r} (environment) is not an absolute path to an executable"
    )
    assert not (tmp_path / "bin").exists()
    assert not (tmp_path / "agent.py").exists()


@pytest.mark.parametrize("name", ["python\udcff", "x$(touch pwned);`touch pwned`\nnext line"])
def test_an_interpreter_whose_name_is_not_utf8_or_is_shell_syntax_is_run_as_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A file name is bytes: one that is not UTF-8 reaches Python as a lone surrogate, which the
    wrapper must write back as the same bytes (not fail with UnicodeEncodeError half-way through)."""
    chosen = tmp_path / name
    chosen.write_text('#!/bin/sh\nprintf "%s\\n" "$0" "$@"\n')
    chosen.chmod(0o755)
    monkeypatch.setenv("UPKEEP_LAB_NODE_PYTHON", str(chosen))
    node.install_agent(tmp_path)
    reporter = node.install_tunnel_sessions(tmp_path)
    for wrapper, args in ((tmp_path / "bin" / "upkeep-agent", ["status"]), (reporter, [])):
        out = subprocess.run([wrapper, *args], capture_output=True, check=True, cwd=tmp_path).stdout
        assert out.startswith(os.fsencode(chosen) + b"\n-I\n-S\n"), out
    assert not (tmp_path / "pwned").exists()


def test_a_lab_root_with_a_space_or_a_quote_in_its_name_is_passed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`upkeep lab up --root "/srv/my lab"`: the wrappers name the lab's copy of each script."""
    chosen = tmp_path / "python"
    chosen.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    chosen.chmod(0o755)
    monkeypatch.setenv("UPKEEP_LAB_NODE_PYTHON", str(chosen))
    root = tmp_path / "my lab's $(root)"
    root.mkdir()
    node.install_agent(root)
    reporter = node.install_tunnel_sessions(root)
    agent = subprocess.run(
        [root / "bin" / "upkeep-agent", "status"], capture_output=True, text=True, check=True
    )
    assert agent.stdout.splitlines() == ["-I", "-S", str(root / "agent.py"), "status"]
    tunnel = subprocess.run([reporter], capture_output=True, text=True, check=True)
    assert tunnel.stdout.splitlines() == ["-I", "-S", str(root / "tunnel" / "tunnel_sessions.py")]
