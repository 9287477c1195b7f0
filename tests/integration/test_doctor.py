"""`upkeep doctor` and `upkeep lab env`, run as an operator runs them: the real CLI (the venv's `upkeep`
script; `eval "$(upkeep lab env)"` in a bash shell), against real lab nodes and the lab's nginx file
server, with nothing but the environment to go on. A single command is forked from a process that has
imported the CLI already (tests/support/forkserver.py): the same answer, without ~1.8 CPU-s of imports."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from inventory.db import make_engine
from tests.support import forkserver
from tests.support.labs import running_lab
from upkeep.lab import Lab

pytestmark = pytest.mark.lab
BIN = str(Path(sys.executable).parent)


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({"UPKEEP_HOME": str(home), "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"})
    return env


def _lab_env(lab: Lab, home: Path, **extra: str) -> dict[str, str]:
    env = _base_env(home)
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in lab.settings_overrides().items()})
    env.update(extra)
    return env


def _bash(script: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _upkeep(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return forkserver.run(args, env=env, timeout=180, console_script=True)


def _doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    done = _upkeep(env, "doctor", "--json", *args)
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def _statuses(report: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


@pytest.fixture
def small_lab(tmp_path: Path) -> Iterator[Lab]:
    """A lab of its own: these tests stop it, or log into each of its nodes."""
    with running_lab(tmp_path / "lab", clusters=1, nodes=2, upgrade_seconds=0.1, health_delay=0.1) as lab:
        yield lab


def test_lab_env_is_one_eval_away_from_a_working_shell(small_lab: Lab, tmp_path: Path) -> None:
    # A home whose path needs quoting: the exports must survive `eval` intact.
    home = tmp_path / "home with 'quotes' and $dollar"
    env = _base_env(home)
    printed = _bash(shlex.join(["upkeep", "lab", "env", "--root", str(small_lab.root)]), env)
    assert printed.returncode == 0, printed.stderr
    exported = dict(
        line.removeprefix("export ").split("=", 1)
        for line in printed.stdout.splitlines()
        if line.startswith("export ")
    )
    state = json.loads((small_lab.root / "lab.json").read_text())
    assert shlex.split(exported["UPKEEP_FILESERVER_PASSWORD"]) == [state["fileserver"]["password"]]
    assert shlex.split(exported["UPKEEP_HOME"]) == [str(home)]

    # A fresh shell: nothing but `eval "$(upkeep lab env)"`, then commands that need every one of them
    # (file server URL, CA and password for the index; key and known_hosts for the nodes). The exported
    # home round-trips through eval despite its quotes.
    inventory = small_lab.inventory_path
    done = _bash(
        f'eval "$(upkeep lab env --root {shlex.quote(str(small_lab.root))})"\n'
        f"upkeep inventory import {shlex.quote(str(inventory))} >/dev/null\n"
        "upkeep release sync --json\n"
        "upkeep doctor --nodes --json > doctor.json\n",
        _base_env(home),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["versions"], done.stdout
    assert json.loads((tmp_path / "doctor.json").read_text())["ok"]
    assert (home / "upkeep.db").is_file(), "the quoted home did not survive eval"


def test_doctor_passes_against_a_running_lab_then_names_what_fails_when_it_is_down(
    small_lab: Lab, tmp_path: Path
) -> None:
    # An alert channel is only parsed, never sent to: nothing listens on port 9.
    env = _lab_env(small_lab, tmp_path / "home", UPKEEP_ALERT_URLS="json://127.0.0.1:9/upkeep-alerts")
    assert _upkeep(env, "inventory", "import", str(small_lab.inventory_path)).returncode == 0

    code, report, _ = _doctor(env, "--nodes")
    statuses = _statuses(report)
    assert code == 0 and report["ok"] and report["failed"] == [], report
    hosts = [n["hostname"] for n in small_lab.status()["nodes"]]
    for name in (
        "database",
        "inventory",
        "file server tls",
        "file server login",
        "release index",
        "ssh key",
        "known_hosts",
        *(f"node {h}" for h in hosts),
    ):
        assert statuses[name] == "ok", report
    assert statuses["prefect api"] == "warn"  # PREFECT_API_URL unset: said, not failed
    assert statuses["alert urls"] == "ok"

    small_lab.down()
    code, report, _ = _doctor(env, "--nodes")
    assert code == 1 and not report["ok"], report
    assert set(report["failed"]) == {"file server tls", *(f"node {h}" for h in hosts)}, report
    fixes = {c["name"]: c["fix"] for c in report["checks"]}
    assert "file server" in fixes["file server tls"] and "node" in fixes[f"node {hosts[0]}"]


def test_doctor_names_a_wrong_file_server_password(lab: Lab, tmp_path: Path) -> None:
    env = _lab_env(lab, tmp_path / "home", UPKEEP_FILESERVER_PASSWORD="not-the-password")
    assert _upkeep(env, "db", "upgrade").returncode == 0
    code, report, _ = _doctor(env)
    assert code == 1 and report["failed"] == ["file server login"], report
    login = next(c for c in report["checks"] if c["name"] == "file server login")
    assert "401" in login["detail"] and "UPKEEP_FILESERVER_PASSWORD" in login["fix"]
    assert "not-the-password" not in json.dumps(report)
    assert _statuses(report)["release index"] == "skip"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:1/upkeep",  # nothing listens
        "postgresql+psycopg://postgres@127.0.0.1:5432/no_such_database_16",
        "no database url at all",
        "mysql://127.0.0.1/upkeep",
    ],
)
def test_doctor_names_a_wrong_database_url(lab: Lab, tmp_path: Path, url: str) -> None:
    code, report, _ = _doctor(_lab_env(lab, tmp_path / "home", UPKEEP_DATABASE_URL=url))
    assert code == 1 and report["failed"] == ["database"], report
    check = next(c for c in report["checks"] if c["name"] == "database")
    assert "UPKEEP_DATABASE_URL" in check["fix"]
    # The file server and SSH are still checked: one wrong setting does not hide the others.
    assert _statuses(report)["file server login"] == "ok"


def test_doctor_says_to_migrate_a_database_behind_this_checkout(lab: Lab, tmp_path: Path) -> None:
    env = _lab_env(lab, tmp_path / "home")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "upkeep.db").touch()  # exists, never migrated
    code, report, _ = _doctor(env)
    assert code == 1 and report["failed"] == ["database schema"], report
    assert "upkeep db upgrade" in report["checks"][1]["fix"]

    upgraded = _upkeep(env, "db", "upgrade")
    assert upgraded.returncode == 0 and "schema at head" in upgraded.stdout, upgraded.stderr
    code, report, _ = _doctor(env)
    assert code == 0, report


def test_doctor_on_a_database_a_newer_upkeep_migrated_says_to_run_that_version(
    lab: Lab, tmp_path: Path
) -> None:
    """A database migrated by a newer checkout (0012 seen by the 0011 code): `upkeep db upgrade` cannot
    help (Alembic does not know the revision); the fix is to run the newer checkout here."""
    env = _lab_env(lab, tmp_path / "home")
    assert _upkeep(env, "db", "upgrade").returncode == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'upkeep.db'}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    code, report, _ = _doctor(env)
    assert code == 1 and report["failed"] == ["database schema"], report
    check = report["checks"][1]
    assert "newer" in check["detail"] + check["fix"] and "upkeep db upgrade" not in check["fix"], check


def test_doctor_text_output_is_one_line_per_check_with_the_fix(lab: Lab, tmp_path: Path) -> None:
    env = _lab_env(lab, tmp_path / "home", UPKEEP_FILESERVER_PASSWORD="wrong", COLUMNS="80")
    done = _upkeep(env, "doctor")
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    failing = [line for line in lines if line.startswith("FAIL")]
    assert any(
        line.startswith("FAIL  file server login:") and "-> check UPKEEP_FILESERVER_USER" in line
        for line in failing
    ), done.stdout
    assert lines[-1].startswith("not ready:"), done.stdout
