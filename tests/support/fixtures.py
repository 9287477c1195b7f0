"""The shared fixtures, in one plugin (registered by tests/conftest.py, so each session fixture exists
once per test process whichever directories run): databases, the Prefect test harness, the labs,
SMTP, the environment for running the real CLI in a subprocess.

Labs are session-wide and hand out one untouched cluster per test that upgrades (`fresh_cluster`,
`fresh_slow_cluster`, `faults_cluster`); each holds the clusters the test modules run so far in this
process ask for, and grows before each later module's first test (tests/support/labs.py), so adding
such a test never needs a constant raised. Under pytest-xdist every worker is its own process with its
own labs, harness and clusters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.support import databases, labs
from tests.support.labs import growing_lab, running_lab, take_cluster

SOAK = os.environ.get("UPKEEP_SOAK", "") not in ("", "0")


# -- databases ------------------------------------------------------------------------------------------
@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database of each supported kind (SQLite file in tmp_path; a fresh PostgreSQL
    schema per test, dropped afterwards)."""
    yield from (databases.sqlite(tmp_path) if request.param == "sqlite" else databases.postgres())


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty SQLite database in tmp_path."""
    yield from databases.sqlite(tmp_path)


# -- SMTP -----------------------------------------------------------------------------------------------
@pytest.fixture
def smtp() -> Iterator[Any]:
    """A real SMTP server (aiosmtpd) on a free loopback port for one test; `.transport()` reaches it.
    A module that needs another handler overrides it (tests/integration/test_notice_batches.py)."""
    from tests.integration.test_notices import SmtpServer

    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def webhook() -> Iterator[Any]:
    """A real HTTP receiver on loopback for SRE alerts (Apprise json:// posts to it) for one test."""
    from tests.integration.webhook import WebhookReceiver

    receiver = WebhookReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def customer_id(engine: Engine) -> int:
    """One customer (Acme Corp, America/New_York) in `engine`, for tests of notices and alerts."""
    from inventory.db import session_scope
    from inventory.models import Customer

    with session_scope(engine) as session:
        customer = Customer(name="Acme Corp", timezone="America/New_York")
        session.add(customer)
        session.flush()
        assert customer.id is not None
        return customer.id


# -- Prefect --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    import httpx
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with contextlib.ExitStack() as stack:
        for attempt in (1, 2, 3):
            # 30 s by default: on this shared 2-core machine under load the server took longer and
            # every test of the session errored at setup ("Timed out while attempting to connect").
            try:
                stack.enter_context(prefect_test_harness(server_startup_timeout=180))
                break
            except httpx.TransportError:
                # Prefect's start-up wait retries only a refused connection; under load the new server
                # sometimes resets the first one (ReadError) and the harness gives up, erroring every
                # test of the worker. Stop that server and start another.
                failed = SubprocessASGIServer._instances.pop(None, None)
                if failed is not None:
                    failed.stop()
                if attempt == 3:
                    raise
        stack.enter_context(temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
        yield


# -- labs -----------------------------------------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    labs.entering(item)  # before any fixture of the item: a module's first test grows the running labs


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Quick nodes (0.1 s upgrade, 0.2 s to healthy), one cluster per test that asks for `fresh_cluster`."""
    with growing_lab(
        "lab",
        ("fresh_cluster", "second_fresh_cluster", "third_fresh_cluster"),
        tmp_path_factory.mktemp("lab"),
        nodes=3,
        upgrade_seconds=0.1,
        health_delay=0.2,
    ) as started:
        yield started


@pytest.fixture
def fresh_cluster(lab: Any) -> str:
    """A lab cluster that no earlier test has touched."""
    return take_cluster(lab)


@pytest.fixture
def second_fresh_cluster(lab: Any, fresh_cluster: str) -> str:
    """Another lab cluster no test has touched (the same counter as `fresh_cluster`)."""
    return take_cluster(lab)


@pytest.fixture
def third_fresh_cluster(lab: Any, second_fresh_cluster: str) -> str:
    """A third, for a test that upgrades three clusters at once."""
    return take_cluster(lab)


@pytest.fixture(scope="session")
def slow_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second fleet whose upgrades and health checks take long enough for a crash, a pause or an
    approval to land in the middle of them."""
    with growing_lab(
        "slow_lab",
        ("fresh_slow_cluster",),
        tmp_path_factory.mktemp("slowlab"),
        nodes=3,
        upgrade_seconds=0.6,
        health_delay=0.5,
    ) as started:
        yield started


@pytest.fixture
def fresh_slow_cluster(slow_lab: Any) -> str:
    return take_cluster(slow_lab)


@pytest.fixture(scope="session")
def jump_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fleet reachable only through its jump host (the inventory says so)."""
    with running_lab(
        tmp_path_factory.mktemp("jumplab"),
        clusters=2,
        nodes=3,
        access="jump",
        upgrade_seconds=0.1,
        health_delay=0.1,
    ) as started:
        yield started


@pytest.fixture(scope="session")
def tunnel_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fleet reached only through the lab's OpenSSH tunnel server (inventory access: tunnel), 3 nodes a
    cluster, every tunnel closed until the test runs the customer's `lab.tunnel(host, "start")`; one
    cluster per test that asks for `fresh_tunnel_cluster`."""
    with growing_lab(
        "tunnel_lab",
        ("fresh_tunnel_cluster",),
        tmp_path_factory.mktemp("tunnellab"),
        nodes=3,
        access="tunnel",
        upgrade_seconds=0.1,
        health_delay=0.1,
    ) as started:
        yield started


@pytest.fixture
def fresh_tunnel_cluster(tunnel_lab: Any) -> str:
    """A tunnel-lab cluster that no earlier test has touched (its tunnels closed)."""
    return take_cluster(tunnel_lab)


@pytest.fixture(scope="session")
def faults_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Quick nodes (0.1 s upgrade, 0.1 s to healthy) for the remote, file-server and secrets tests;
    `faults_cluster` (and `second_faults_cluster`) in a test: only those are counted when the lab grows."""
    # Counted by the fixtures that take a cluster, not by `faults_lab`: faults_cluster asks for faults_lab,
    # so a test taking one cluster counted two, and the 19 tests that only read the lab (its inventory,
    # fileserver, last node) one each - 43 clusters for the 14 the faults tests take.
    with growing_lab(
        "faults_lab",
        ("faults_cluster", "second_faults_cluster"),
        tmp_path_factory.mktemp("faultslab"),
        minimum=4,
        nodes=3,
        upgrade_seconds=0.1,
        health_delay=0.1,
    ) as started:
        yield started


@pytest.fixture
def faults_cluster(faults_lab: Any) -> str:
    return take_cluster(faults_lab)


@pytest.fixture
def second_faults_cluster(faults_lab: Any, faults_cluster: str) -> str:
    """Another untouched faults-lab cluster, for a test that upgrades two."""
    return take_cluster(faults_lab)


@pytest.fixture(scope="session")
def crash_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Nodes slow enough for a kill to land inside an upgrade (0.5 s) or a health wait (0.4 s)."""
    with running_lab(
        tmp_path_factory.mktemp("crashlab"),
        clusters=10 if SOAK else 3,
        nodes=3,
        upgrade_seconds=0.5,
        health_delay=0.4,
    ) as started:
        yield started


# -- runtimes on a lab ----------------------------------------------------------------------------------
def lab_settings_for(lab: Any, tmp_path: Path) -> Any:
    from upkeep.settings import load_settings

    return load_settings(home=tmp_path / "home", **lab.settings_overrides())


@pytest.fixture
def lab_settings(lab: Any, tmp_path: Path) -> Any:
    return lab_settings_for(lab, tmp_path)


@pytest.fixture
def faults_settings(faults_lab: Any, tmp_path: Path) -> Any:
    return lab_settings_for(faults_lab, tmp_path)


def runtime_for(lab: Any, settings: Any, engine: Any) -> Iterator[Any]:
    """A flow Runtime wired to `lab` and to `engine`, which gets the lab's inventory imported."""
    from flows import runtime as flow_runtime
    from inventory.importer import import_inventory
    from upkeep.bootstrap import build_runtime

    import_inventory(lab.inventory_path, engine=engine, actor="test")
    runtime = build_runtime(settings, engine=engine)
    runtime.health_timeout = 5.0
    runtime.command_timeout = 10.0
    flow_runtime.configure(runtime)
    try:
        yield runtime
    finally:
        flow_runtime.configure(None)


@pytest.fixture
def lab_runtime(lab: Any, lab_settings: Any, sqlite_engine: Any, prefect_harness: None) -> Iterator[Any]:
    """A flow Runtime wired to the lab and to a fresh SQLite database holding the lab's inventory."""
    yield from runtime_for(lab, lab_settings, sqlite_engine)


@pytest.fixture
def prefect_world(sqlite_engine: Engine, tmp_path: Path, prefect_harness: None) -> Iterator[Any]:
    """tests/support/update_world.py's World (fake nodes, file server, mail and clock) under the real
    Prefect engine and server: what Prefect records of a flow's runs, with no lab to start."""
    from flows import runtime as flow_runtime
    from tests.support.update_world import World

    made = World(sqlite_engine, tmp_path)
    flow_runtime.configure(made.runtime)
    try:
        yield made
    finally:
        flow_runtime.configure(None)


@pytest.fixture
def lab_runtime_any_db(lab: Any, lab_settings: Any, engine: Any, prefect_harness: None) -> Iterator[Any]:
    """The same on every supported database (SQLite and PostgreSQL)."""
    yield from runtime_for(lab, lab_settings, engine)


@pytest.fixture
def tunnel_runtime(
    tunnel_lab: Any, sqlite_engine: Any, prefect_harness: None, tmp_path: Path
) -> Iterator[Any]:
    """A flow Runtime on the tunnel lab and a fresh SQLite database holding its inventory."""
    yield from runtime_for(tunnel_lab, lab_settings_for(tunnel_lab, tmp_path), sqlite_engine)


@pytest.fixture
def faults_runtime(
    faults_lab: Any, faults_settings: Any, sqlite_engine: Any, prefect_harness: None
) -> Iterator[Any]:
    """A flow Runtime on the faults lab and a fresh SQLite database holding its inventory."""
    yield from runtime_for(faults_lab, faults_settings, sqlite_engine)


# -- the real CLI in a subprocess -----------------------------------------------------------------------
def cli_env(lab: Any, home: Path, **extra: str) -> dict[str, str]:
    """Environment for the real `upkeep` CLI against `lab` with its home (and SQLite database) in `home`,
    and the session's Prefect test server; nothing of this process's UPKEEP_/PREFECT_ settings."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in lab.settings_overrides().items()})
    env.update(
        {
            "UPKEEP_HOME": str(home),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def slow_cli_env(
    slow_lab: Any, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for running the real `upkeep` CLI in a subprocess against the slow lab, a SQLite
    database of its own and the session's Prefect test server. Per module: the slow lab grows before a
    module's first test, so a later module's clusters were not in an earlier module's import."""
    env = cli_env(slow_lab, tmp_path_factory.mktemp("home"), UPKEEP_HEALTH_TIMEOUT="10")
    upkeep_cli(env, "inventory", "import", str(slow_lab.inventory_path), timeout=120)
    return env


def upkeep_cli(env: dict[str, str], *args: str, check: bool = True, timeout: float = 180) -> Any:
    from tests.support import forkserver

    return forkserver.run(args, env=env, check=check, timeout=timeout)


def cli_engine(env: dict[str, str]) -> Any:
    from inventory.db import make_engine

    return make_engine(f"sqlite:///{Path(env['UPKEEP_HOME']) / 'upkeep.db'}")
