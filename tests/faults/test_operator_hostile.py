"""Adversarial pass on issue #16's operator commands (`upkeep db upgrade`, `upkeep doctor`, `upkeep lab
env`): two operators at once, a database that holds a lock, hostile setting values. Each test is a break
found by trying, kept so it cannot come back."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from inventory.db import make_engine, migrate
from inventory.revision import current_revisions, head_revisions
from tests.conftest import POSTGRES_URL
from tests.faults.helpers import wait_for
from tests.faults.netfaults import Blackhole
from tests.support import forkserver

pytestmark = [pytest.mark.faults]


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (never migrated), dropped afterwards."""
    schema = f"upkeep_t_{secrets.token_hex(6)}"
    admin = make_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield schema
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def _engine(schema: str, name: str) -> Engine:
    return make_engine(
        POSTGRES_URL,
        connect_args={"options": f"-csearch_path={schema}", "application_name": name},
    )


def _waiting_on_a_lock(name: str) -> bool:
    admin = make_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = :name AND wait_event_type = 'Lock'"
                    ),
                    {"name": name},
                ).scalar()
            )
    finally:
        admin.dispose()


@pytest.mark.postgres
def test_two_migrations_at_once_on_a_fresh_postgres_database_both_end_at_head(pg_schema: str) -> None:
    """Two `upkeep db upgrade` (or any two commands: each migrates on start) on a fresh database: the
    second used to die with a UniqueViolation on alembic_version's catalog entry (a traceback)."""
    name = f"second-{pg_schema}"
    first, second = _engine(pg_schema, f"first-{pg_schema}"), _engine(pg_schema, name)
    at_commit, release = threading.Event(), threading.Event()

    def hold(_conn: Any) -> None:  # the first migration holds its transaction open at COMMIT ...
        at_commit.set()
        release.wait(60)  # ... until the second is seen waiting (or a minute has passed)

    event.listen(first, "commit", hold)
    errors: dict[str, BaseException] = {}

    def run(label: str, engine: Engine) -> None:
        try:
            migrate(engine)
        except BaseException as exc:  # reported below
            errors[label] = exc

    threads = [
        threading.Thread(target=run, args=(label, e)) for label, e in (("first", first), ("second", second))
    ]
    try:
        threads[0].start()
        wait_for(at_commit.is_set, "the first migration to reach COMMIT", 60)
        threads[1].start()
        wait_for(lambda: _waiting_on_a_lock(name), "the second migration to wait for the first", 60)
    finally:
        release.set()
        for thread in threads:
            thread.join(120)
    try:
        assert not errors, {label: f"{type(e).__name__}: {e}" for label, e in errors.items()}
        assert current_revisions(second) == head_revisions()
    finally:
        first.dispose()
        second.dispose()


def _cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # timeout: a hang guard, the doctor must answer long before this
    return forkserver.run(args, env=env, timeout=timeout, console_script=True)


def _env(home: Path, **upkeep: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env["UPKEEP_HOME"] = str(home)
    env.update({f"UPKEEP_{k.upper()}": v for k, v in upkeep.items()})
    return env


@pytest.mark.postgres
def test_doctor_answers_while_another_session_holds_a_lock_on_the_inventory(
    pg_schema: str, tmp_path: Path
) -> None:
    """A migration (or any session) holding an exclusive lock on an inventory table made `upkeep doctor`
    wait with it, for ever: no statement timeout. It must answer in bounded time and say why."""
    engine = _engine(pg_schema, f"holder-{pg_schema}")
    migrate(engine)
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{pg_schema}"
    try:
        with engine.begin() as conn:
            conn.execute(text("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE"))
            done = _cli(["doctor", "--json"], _env(tmp_path / "home", database_url=url))
    finally:
        engine.dispose()
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    inventory = next(c for c in report["checks"] if c["name"] == "inventory")
    assert inventory["status"] == "fail", inventory
    assert "lock" in inventory["detail"] + inventory["fix"], inventory


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql+psycopg://bob:HUNTER2@127.0.0.1:notaport/db", "not a database URL"),
        ("mysql://bob:HUNTER2@127.0.0.1/db", "only sqlite and postgresql"),
        ("postgresql+psycopg://postgres:HUNTER2@127.0.0.1:5432/no_such_db_adv16", "no_such_db_adv16"),
        ("sqlite:////proc/no-such-dir/upkeep.db", "/proc/no-such-dir"),
    ],
    ids=["unparseable", "driver", "no-database", "sqlite-dir"],
)
@pytest.mark.postgres
def test_db_upgrade_refuses_a_bad_database_in_one_line_and_in_json(
    url: str, needle: str, tmp_path: Path
) -> None:
    """`upkeep db upgrade` ended in a traceback for three of these, and `--json` printed no JSON."""
    env = _env(tmp_path / "home", database_url=url)
    plain = _cli(["db", "upgrade"], env)
    assert plain.returncode == 1, plain.stdout + plain.stderr
    assert "Traceback" not in plain.stderr, plain.stderr
    assert needle in plain.stderr and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    as_json = _cli(["db", "upgrade", "--json"], env)
    assert as_json.returncode == 1, as_json.stdout + as_json.stderr
    assert json.loads(as_json.stdout)["exit"] == 1
    assert needle in json.loads(as_json.stdout)["error"]
    assert "HUNTER2" not in plain.stdout + plain.stderr + as_json.stdout + as_json.stderr


@pytest.mark.postgres
def test_a_password_in_the_database_urls_query_is_never_shown(pg_schema: str, tmp_path: Path) -> None:
    """libpq takes `?password=`; render_as_string(hide_password=True) hides only the userinfo one, so
    `db upgrade`, `doctor` and `settings` printed it."""
    url = f"{POSTGRES_URL}?password=HUNTER2&options=-csearch_path%3D{pg_schema}"
    env = _env(tmp_path / "home", database_url=url)
    outputs = [_cli(args, env) for args in (["db", "upgrade"], ["doctor", "--json"], ["settings", "--json"])]
    assert outputs[0].returncode == 0, outputs[0].stderr
    database = next(c for c in json.loads(outputs[1].stdout)["checks"] if c["name"] == "database")
    assert database["status"] == "ok", database
    for done in outputs:
        assert "HUNTER2" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_doctor_never_shows_userinfo_of_the_prefect_or_file_server_url(tmp_path: Path) -> None:
    """A reverse proxy's basic-auth password in PREFECT_API_URL, or one put into UPKEEP_FILESERVER_URL,
    was printed verbatim by the doctor (and `upkeep settings`)."""
    env = _env(
        tmp_path / "home",
        fileserver_url="http://bob:HUNTER2@127.0.0.1:1/files?token=HUNTER2",
        fileserver_allow_http="true",
    )
    env["PREFECT_API_URL"] = "http://bob:HUNTER2@127.0.0.1:1/api"
    doctor = _cli(["doctor", "--json"], env)
    settings = _cli(["settings", "--json"], env)
    assert doctor.returncode == 1 and settings.returncode == 0, doctor.stderr + settings.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["prefect api"]["status"] == "fail" and "127.0.0.1:1" in checks["prefect api"]["detail"]
    assert checks["file server login"]["status"] == "fail", checks
    for done in (doctor, settings):
        assert "HUNTER2" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_doctor_names_a_ca_bundle_that_holds_no_certificate(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    done = _cli(["doctor", "--json"], _env(tmp_path / "home", fileserver_ca=str(bundle)))
    assert done.returncode == 1, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["file server tls"]["status"] == "fail", checks
    assert str(bundle) in checks["file server tls"]["detail"], checks["file server tls"]


def test_eval_of_a_failed_lab_env_fails_the_shell_instead_of_going_on_with_defaults(tmp_path: Path) -> None:
    """`eval "$(upkeep lab env)"` is how deploying.md sets up a worker shell. When `lab env` failed (no lab
    there, a bad setting) it printed nothing on stdout, `eval ""` succeeded, and the shell went on, even
    under `set -e`, with the default home and database: a worker on the wrong record, silently."""
    env = _env(tmp_path / "no-lab-here")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    done = subprocess.run(
        ["bash", "-c", 'set -euo pipefail; eval "$(upkeep lab env)"; echo REACHED'],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "REACHED" not in done.stdout, done.stdout + done.stderr
    assert done.returncode != 0
    assert "no lab at" in done.stderr, done.stderr


def test_doctor_fails_when_this_checkouts_flows_do_not_import(tmp_path: Path) -> None:
    """A worker whose .venv lags its checkout (a dependency added, `pip install -e .` not run) got a clean
    doctor, while every flow run it took crashed and `prefect deploy` said only "Could not find object
    'product_update' in 'upkeep/entrypoints.py'". Found while following deploying.md with such a venv; and
    the healthy case caught upkeep/requests.py shadowing the requests package when Prefect loads the file."""
    shadow = tmp_path / "shadow" / "detect_secrets"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'detect_secrets'\")\n")
    env = _env(tmp_path / "home")
    healthy = {c["name"]: c for c in json.loads(_cli(["doctor", "--json"], env).stdout)["checks"]}
    env["PYTHONPATH"] = str(shadow.parent)
    done = _cli(["doctor", "--json"], env)
    assert "Traceback" not in done.stderr, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert healthy["flows"]["status"] == "ok", healthy["flows"]
    assert checks["flows"]["status"] == "fail", checks["flows"]
    assert "detect_secrets" in checks["flows"]["detail"], checks["flows"]
    assert "pip install" in checks["flows"]["fix"]


def test_db_upgrade_against_a_database_host_that_blackholes_gives_up_in_bounded_time(tmp_path: Path) -> None:
    """libpq waits for a server's answer for ever unless told otherwise: `upkeep db upgrade` against a
    half-dead database host hung the operator's shell (the doctor had its own 5 s connect timeout)."""
    with Blackhole() as hole:
        url = f"postgresql+psycopg://upkeep:HUNTER2@127.0.0.1:{hole.port}/upkeep"
        done = _cli(["db", "upgrade", "--json"], _env(tmp_path / "home", database_url=url))
    assert done.returncode == 1, done.stdout + done.stderr
    error = json.loads(done.stdout)["error"]
    assert "timeout" in error.lower() and "HUNTER2" not in done.stdout + done.stderr, error
