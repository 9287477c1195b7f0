"""Defaults an operator never has to think about: the demo's home, and no telemetry from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from upkeep.demo import CHECKOUT, demo_home
from upkeep.settings import load_settings


def test_the_demo_lives_in_its_checkout_so_two_checkouts_never_share_a_lab(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("UPKEEP_HOME", "UPKEEP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the default home, without a TOML in it
    assert demo_home(load_settings()) == CHECKOUT / ".upkeep" / "demo"
    assert demo_home(load_settings(home=tmp_path / "mine")) == tmp_path / "mine" / "demo"  # explicit: kept


def test_demo_home_is_gitignored() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(CHECKOUT / ".upkeep" / "demo" / "upkeep.db")], cwd=CHECKOUT
    )
    assert ignored.returncode == 0, ".upkeep/ must be in .gitignore"


def test_the_cli_process_switches_telemetry_off_itself() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED")
    }
    probe = (
        "import os, upkeep.cli\n"
        "from prefect._internal.analytics.enabled import is_telemetry_enabled\n"
        "env = os.environ\n"
        "print(env['DO_NOT_TRACK'], env['PREFECT_SERVER_ANALYTICS_ENABLED'], is_telemetry_enabled())"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["1", "false", "False"], done.stderr


def test_the_operator_s_name_is_getpass_s_and_a_missing_one_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`upkeep approve|pause|cancel` record who ran them: getpass's name, from the first of its variables
    set; with none set and no password entry for the uid (a container's arbitrary uid), getpass raises
    KeyError (a traceback): one line instead, naming the uid, nothing written."""
    import getpass
    import pwd

    from upkeep.cli_common import operator_name
    from upkeep.console import CliError

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USERNAME", "ada")
    assert operator_name() == getpass.getuser() == "ada"
    monkeypatch.delenv("USERNAME")

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(CliError, match=rf"uid {os.getuid()} has no entry in the password database") as err:
        operator_name()
    assert "\n" not in str(err.value) and "$LOGNAME, $USER" in str(err.value)
