"""`upkeep doctor`: is this machine ready to run Upkeep? One check per part, each naming what to do
when it fails.

Every check is a small function returning `Check`s; `run_checks` runs them in order, handing later
checks what earlier ones learned (the settings, the database, the inventory's nodes) and turning any
exception a check did not expect into a failed check naming it, so the doctor itself never ends in a
traceback. Nothing is written: the database is opened but never migrated, no mail or alert is sent,
nodes are logged into and left at once.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import event
from sqlalchemy.engine import Engine

from flows import prefect_api
from upkeep.prefect_server import (
    ANSWER_DEADLINE,
    POOL,
    SCHEDULES_VARIABLE,
    ScheduleIntent,
    answer_errors,
    answer_problem,
    content_kind,
    deployments_filtered,
    dispatch_live,
    expected_deployments,
    http_status,
    json_answer,
    prefect_api_client,
    prefect_api_problem,
    prefect_json,
    schedules_intent,
    server_version,
    upkeeps,
    work_pool,
)
from upkeep.settings import Settings, mask_url, printable

Status = Literal["ok", "warn", "fail", "skip"]
NET_TIMEOUT = 5.0  # seconds per network question: a doctor answers quickly or says what hangs
CERT_WARN_DAYS = 14
NODE_THREADS = 8
CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""  # what to do about it (shown unless the check passed)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def skip(name: str, detail: str) -> Check:
    return Check(name, "skip", detail)


@dataclass(frozen=True)
class NodeRef:
    cluster: str
    hostname: str
    address: str
    port: int
    user: str
    jump: tuple[str, int, str] | None = None  # host, port, user of the cluster's jump host
    # access tunnel: the way in (tunnel server, forwarded port) with the inventory's host keys; such a
    # node's key is the inventory's, so known_hosts is not asked for it
    tunnel: Any = None


@dataclass
class Findings:
    """What earlier checks learned for later ones."""

    settings: Settings | None = None
    engine: Engine | None = None
    nodes: list[NodeRef] | None = None  # None: the inventory could not be read
    checks: list[Check] = field(default_factory=list)


# -- settings and database --------------------------------------------------------------------------
def check_settings(found: Findings) -> Iterator[Check]:
    from upkeep.settings import SettingsError, config_file, load_settings

    try:
        found.settings = load_settings()
    except SettingsError as exc:
        yield fail(
            "settings", str(exc), "fix the UPKEEP_* variable or the TOML file named (see `upkeep settings`)"
        )
        return
    source = config_file()
    where = f"UPKEEP_* variables and {source}" if source.is_file() else "UPKEEP_* variables (no TOML file)"
    yield ok("settings", f"loaded from {where}; home {found.settings.home}")


def check_database(found: Findings) -> Iterator[Check]:
    from sqlalchemy.engine import make_url

    from inventory.db import make_engine
    from inventory.revision import current_revisions, head_revisions, known_revisions

    settings = found.settings
    assert settings is not None
    url = settings.resolved_database_url()
    fix_url = (
        "set UPKEEP_DATABASE_URL to postgresql+psycopg://USER:PASSWORD@HOST/DB (or leave it empty for "
        "SQLite in the home dir)"
    )
    try:
        parsed = make_url(url)
    except Exception as exc:  # its message may quote a piece of the URL (a port that is a password)
        yield fail(
            "database", f"{settings.database_named()} is not a database URL ({type(exc).__name__})", fix_url
        )
        return
    shown = mask_url(url)
    is_sqlite = parsed.drivername.startswith("sqlite")
    if is_sqlite and parsed.database and not Path(parsed.database).is_file():
        yield fail("database", f"{shown}: no database file", "create and migrate it: `upkeep db upgrade`")
        return
    try:
        extra: dict[str, Any] = {} if is_sqlite else {"connect_args": {"connect_timeout": int(NET_TIMEOUT)}}
        engine = make_engine(url, **extra)
        if not is_sqlite:
            # Every question has a bound: a session holding a lock (a migration running, a stuck
            # transaction) must make the doctor say so, not wait with it.
            event.listen(engine, "connect", _bounded_statements)
    except Exception as exc:  # an unsupported driver, a driver that is not installed
        yield fail("database", _one_line(str(exc)), fix_url)
        return
    try:
        current = current_revisions(engine)
    except Exception as exc:
        engine.dispose()
        yield fail("database", f"{shown}: cannot connect: {_one_line(_db_cause(exc))}", fix_url)
        return
    found.engine = engine
    heads = head_revisions()
    at = ", ".join(sorted(current)) or "none"
    if current - known_revisions():
        yield fail(
            "database schema",
            f"{shown}: schema at {at}, newer than this checkout's migrations (they end at "
            f"{', '.join(sorted(heads))}): a newer Upkeep migrated it",
            "run that newer checkout here too (every worker must run the same checkout): this one "
            "cannot migrate it",
        )
        return
    if current != heads:
        yield fail(
            "database schema",
            f"{shown}: schema at {at}, this checkout's migrations end at {', '.join(sorted(heads))}",
            "migrate it: `upkeep db upgrade` (every worker must run the same checkout)",
        )
        return
    yield ok("database", f"{shown}: reachable, schema at head ({at})")
    yield from _inventory(found, engine)


def _bounded_statements(dbapi_connection: Any, _record: Any) -> None:
    ms = int(NET_TIMEOUT * 1000)
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET statement_timeout = {ms}")
        cursor.execute(f"SET lock_timeout = {ms}")
    dbapi_connection.commit()


def _inventory(found: Findings, engine: Engine) -> Iterator[Check]:
    from sqlalchemy.exc import DBAPIError
    from sqlmodel import Session, col, select

    from flows.plan import node_target
    from inventory.models import AccessKind, Cluster, Customer, Node

    try:
        with Session(engine) as session:
            customers = len(session.exec(select(Customer.id)).all())
            rows = session.exec(
                select(Cluster, Node)
                .join(Node, col(Node.cluster_id) == col(Cluster.id))
                .order_by(col(Cluster.name), col(Node.position))
            ).all()
    except DBAPIError as exc:
        yield fail(
            "inventory",
            f"cannot read it within {NET_TIMEOUT:g} s: {_one_line(_db_cause(exc))}",
            "another session holds a lock on it (a migration running, a stuck transaction?): "
            "see pg_stat_activity / pg_locks, then run the doctor again",
        )
        return
    found.nodes = [
        NodeRef(
            cluster.name,
            node.hostname,
            node.address,
            node.port,
            node.ssh_user,
            (cluster.jump_host, cluster.jump_port or 22, cluster.jump_user or node.ssh_user)
            if cluster.access is AccessKind.jump and cluster.jump_host
            else None,
            node_target(cluster, node) if cluster.access is AccessKind.tunnel else None,
        )
        for cluster, node in rows
    ]
    clusters = len({n.cluster for n in found.nodes})
    if not found.nodes:
        yield warn("inventory", "no clusters", "import your fleet: `upkeep inventory import FILE`")
        return
    yield ok("inventory", f"{customers} customer(s), {clusters} cluster(s), {len(found.nodes)} node(s)")


# -- Prefect ------------------------------------------------------------------------------------------


def check_prefect(found: Findings) -> Iterator[Check]:
    import prefect
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    limit = found.settings.cluster_limit if found.settings is not None else ""
    if not api:
        yield warn(
            "prefect api",
            "PREFECT_API_URL is not set: flows run by this CLI use a temporary local Prefect server, "
            "and no deployment or worker can be reached",
            "for deployments and workers: export PREFECT_API_URL=http://PREFECT_HOST:4200/api",
        )
        if limit:  # the temporary server's own database holds its limits: not started for a look
            yield skip("cluster limit", f"{_limit_setting(limit)}: not checked without PREFECT_API_URL")
        return
    shown_api = _bare(api)
    fix_api = f"start the server (`prefect server start`) or correct PREFECT_API_URL ({shown_api})"
    with prefect_api_client(api) as http:
        version, problem = "", prefect_api_problem(http)
        if problem is None:
            version, problem = server_version(http)
        if problem is not None:
            yield fail("prefect api", f"{shown_api}: {problem}", fix_api)
            return
        mine = prefect.__version__
        if version.split(".")[:2] != mine.split(".")[:2]:
            yield warn(
                "prefect api",
                f"{shown_api}: server {version}, this machine's client {mine}",
                "run the same Prefect minor version everywhere (pyproject.toml pins it)",
            )
        else:
            yield ok("prefect api", f"{shown_api}: healthy, server {version} (client {mine})")
        # Each read on its own: an API that answers /health and 500 (or a proxy's page) on the rest raised
        # out of the first, one "prefect api: could not check: HTTPStatusError ... for url ..." line, and
        # the cluster limit was never looked at; a 200 that is no work pool was "ok (None, status None)".
        fix_answer = f"check the Prefect server behind {shown_api} (and a proxy before it)"
        yield from _answered("work pool", shown_api, fix_answer, _pool_and_workers(http))
        yield from _answered("deployments", shown_api, fix_answer, _deployments(http))
        if limit:
            assert found.settings is not None  # a limit is only read from them
            yield _cluster_limit(http, limit, within=found.settings.prefect_answer_seconds)


NO_UPDATE_STARTS = "no update starts (the dispatcher holds them; `upkeep update` and `upkeep resume` refuse)"
UNKNOWN_LIMIT = "whether it grants a slot is unknown, and `upkeep update|resume` refuse while it answers so"


def _limit_setting(name: str) -> str:
    return f"UPKEEP_CLUSTER_LIMIT '{_one_line(printable(name), 100)}'"


def _cluster_limit(http: Any, name: str, *, within: float = ANSWER_DEADLINE) -> Check:
    """The Prefect global concurrency limit UPKEEP_CLUSTER_LIMIT names, as a run will ask for its slots
    (flows/product_update.py `cluster_slot`): missing, or at 0, the dispatcher starts no update (flows/
    dispatch.py `cluster_limit_blocks`) and `upkeep update|resume` refuse (upkeep/updates.py); disabled,
    Prefect grants every ask and nothing bounds the clusters upgraded at once. `within`: seconds the read
    may take (UPKEEP_PREFECT_ANSWER_SECONDS): the doctor waits what `upkeep update` waits for the same
    read, no less (it failed a limit the commands read) and no more (adv43)."""
    import httpx

    from flows.prefect_api import prefects_not_found
    from flows.report import shell_word

    setting = _limit_setting(name)
    api = _bare(str(http.base_url).rstrip("/"))
    path = f"v2/concurrency_limits/{prefect_api.path_name(name)}"
    try:  # as bounded as the /health question: a server that answers that and hangs here was waited for
        # httpx's per-read timeout a little longer (flows/prefect_api.py `quick_client`): the deadline says.
        reply = prefect_api.within(within, lambda: http.get(path, timeout=within + NET_TIMEOUT))
    except (httpx.TimeoutException, prefect_api.Deadline):
        return fail(
            "cluster limit",
            f"{setting}: the Prefect API ({api}) did not answer within {within:g} s "
            "(UPKEEP_PREFECT_ANSWER_SECONDS); whether it grants a slot is unknown, and "
            "`upkeep update|resume` refuse while it does not answer",
            f"check the Prefect server behind {api}, then run `upkeep doctor` again",
        )
    except httpx.HTTPError as exc:  # /health answered, then the server went (refused, reset)
        return fail(
            "cluster limit",
            f"{setting}: the Prefect API ({api}) did not answer the limit's read "
            f"({_one_line(printable(str(exc) or type(exc).__name__), 200)}); "
            "whether it grants a slot is unknown",
            f"check the Prefect server behind {api}, then run `upkeep doctor` again",
        )
    if reply.status_code == 404 and prefects_not_found(reply):
        return fail(
            "cluster limit",
            f"{setting}: no Prefect global concurrency limit has that name; {NO_UPDATE_STARTS}",
            f"prefect gcl create {shell_word(name)} --limit N, or unset UPKEEP_CLUSTER_LIMIT",
        )
    # Read as the commands read it (flows/product_update.py `limit_state`, Prefect's own model): an error
    # status, or a 200 that is no limit, is what they refuse ("erred"); the doctor said "the Prefect limit
    # allows None clusters at once", or raised out of the check (reported under "prefect api", the URL
    # whole) (adv48).
    limit = _limit_answer(reply)
    if isinstance(limit, str):
        return fail(
            "cluster limit",
            f"{setting}: the Prefect API ({api}) answered the limit's read with {limit}; {UNKNOWN_LIMIT}",
            f"check the Prefect server behind {api} (and a proxy before it), then run `upkeep doctor` again",
        )
    size, active, used = limit.limit, limit.active, limit.active_slots
    # A disabled limit is enforced on nothing, at 0 too: the commands and the dispatcher start updates
    # (`limit_state`); failed as "no update starts", the doctor contradicted them (adv48).
    if size < 1 and active:
        return fail(
            "cluster limit",
            f"{setting}: the Prefect limit allows {size} clusters at once; {NO_UPDATE_STARTS}",
            f"prefect gcl update {shell_word(name)} --limit N (N at least 1), or unset UPKEEP_CLUSTER_LIMIT",
        )
    if not active:
        return warn(
            "cluster limit",
            f"{setting}: the Prefect limit ({size}) is disabled: Prefect grants every ask, so nothing bounds "
            "the clusters upgraded at once",
            f"prefect gcl enable {shell_word(name)}, or unset UPKEEP_CLUSTER_LIMIT",
        )
    return ok("cluster limit", f"{setting}: {size} clusters at once ({used} in use now)")


def _limit_answer(reply: Any) -> Any:
    """The global concurrency limit in `reply` as Prefect's client reads it (its response model: what the
    commands read), or what the API answered instead, as one line: 'HTTP 500 Internal Server Error', or
    'something that is not a limit (...)'."""
    from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
    from pydantic import ValidationError

    if reply.status_code != 200:
        return http_status(reply)
    answer = json_answer(reply)
    if answer is None:
        return f"something that is not a limit ({content_kind(reply)}, not JSON)"
    try:
        return GlobalConcurrencyLimitResponse.model_validate(answer[0])
    except ValidationError as exc:
        return f"something that is not a limit ({printable(prefect_api.not_a_limit(exc))})"


def _answered(name: str, api: str, fix: str, checks: Iterator[Check]) -> Iterator[Check]:
    """`checks` as they come; a read among them that the Prefect API answered with an error status, with
    what is not Prefect's answer (`prefect_json`), or not at all, is one failed check named `name`
    saying which (adv48), and the checks after it still run."""
    try:
        yield from checks
    except answer_errors() as exc:
        yield fail(name, f"{api}: {answer_problem(exc)}", fix)


def _pool_and_workers(http: Any) -> Iterator[Check]:
    found = work_pool(http)  # a proxy's 404 is no "no pool" (`_answered` fails it as not Prefect's)
    if found is None:
        yield fail("work pool", f"no work pool {POOL!r}", f"prefect work-pool create {POOL} --type process")
        yield skip("workers", f"no work pool {POOL!r}")
        return
    if found.get("type") != "process":  # adv54: the process workers of docs/deploying.md never run it
        yield fail(
            "work pool",
            f"{POOL} is of type {_one_line(printable(str(found.get('type'))), 60)!r}, not 'process': "
            f"`prefect worker start --pool {POOL}` (docs/deploying.md) does not run its flows",
            f"remove or rename that pool, then from the checkout: upkeep deploy (it creates {POOL} as a "
            "process pool)",
        )
    else:
        yield ok("work pool", f"{POOL} ({found.get('type')}, status {found.get('status')})")
    reply = http.post(f"work_pools/{POOL}/workers/filter", json={})
    workers = prefect_json(reply, list, "list of workers", "name")
    online = sorted(w["name"] for w in workers if w.get("status") == "ONLINE")
    offline = len(workers) - len(online)
    if not online:
        yield fail(
            "workers",
            f"no worker online in {POOL}" + (f" ({offline} offline)" if offline else ""),
            f"on a worker machine, in its checkout: UPKEEP_CHECKOUT=$PWD prefect worker start --pool {POOL}",
        )
        return
    yield ok(
        "workers", f"{len(online)} online: {', '.join(online[:5])}" + (" ..." if len(online) > 5 else "")
    )


def deployments_line(http: Any, api: str) -> Check:
    """The doctor's `deployments` line, read now from the API at `api` (`http` its client): what
    `upkeep deploy` and `upkeep live on|off` show after they acted."""
    try:
        return next(iter(_deployments(http)))
    except answer_errors() as exc:
        return fail("deployments", f"{_bare(api)}: {answer_problem(exc)}", "run `upkeep doctor` again")


def _deployments(http: Any) -> Iterator[Check]:
    expected = expected_deployments()
    # adv54: by name (one page of every deployment on a shared server missed Upkeep's), and only those of
    # Upkeep's entrypoints (another flow may have a deployment of the same name)
    query = {"deployments": {"name": {"any_": expected}}} if expected else {}
    listed = deployments_filtered(http, query)  # adv61: every page (Upkeep's behind 200 namesakes)
    found = {d["name"]: d for d in listed if upkeeps(d)}
    missing = [name for name in expected if name not in found]
    intent = schedules_intent(http)
    dispatch: dict[str, Any] = found.get("dispatch") or {}
    scheduled = any(s.get("active") for s in dispatch.get("schedules", []))
    toggled_off = scheduled and bool(dispatch.get("paused"))  # the UI's toggle: the deployment paused
    live = dispatch_live(dispatch)
    keep = "true" if live else "false"  # what the variable must say: a live dispatcher stays live
    # upkeep/deploy.py: `upkeep live on|off` sets the variable and the schedules together, and `upkeep
    # deploy` refuses a variable that is not exactly true/false or disagrees with the dispatch schedule.
    fix = f"upkeep live {'on' if live else 'off'}"
    if missing:
        deploy = "from the checkout: upkeep deploy"
        yield fail(
            "deployments",
            f"missing: {', '.join(missing)}; {_first_deploy(intent)}",
            f"{deploy} (it records {SCHEDULES_VARIABLE} false and deploys paused)"
            if intent.missing and len(missing) == len(expected)
            else deploy
            if intent.exact is live
            else f"{fix} (what the dispatcher is now), then {deploy}",
        )
        return
    count = f"{len(expected) or len(found)} found"
    state = (
        "dispatch schedule ACTIVE: due updates start and queued customer notices go out every 60 s"
        if live
        else "dispatch deployment paused (its schedule is on): nothing starts or is sent by itself"
        if toggled_off
        else "dispatch schedule paused: nothing starts or is sent by itself"
    )
    if intent.unread:
        yield warn(
            "deployments",
            f"{count}; {state}; {SCHEDULES_VARIABLE} could not be read ({intent.unread}): what the next "
            "`prefect deploy` does to the schedules is unknown",
            f"prefect variable get {SCHEDULES_VARIABLE} (it should say {keep})",
        )
    elif not intent.deploys:
        yield warn(
            "deployments",
            f"{count}; {state}; {SCHEDULES_VARIABLE} is {intent.shown}: "
            "the next `prefect deploy` fails on the scheduled deployments",
            fix,
        )
    elif intent.active is None:
        yield warn(
            "deployments",
            f"{count}; {state}; {SCHEDULES_VARIABLE} is null: the next `prefect deploy` leaves `active` out, "
            "which keeps these schedules as they are but creates any new schedule ACTIVE",
            fix,
        )
    elif intent.active is not live:
        then = (
            "switches every schedule OFF (scheduled updates stop)" if live else "switches every schedule ON"
        )
        yield warn(
            "deployments",
            f"{count}; {state}, but {SCHEDULES_VARIABLE} is {intent.shown}: the next `prefect deploy` {then}",
            fix if live else f"to stay paused: {fix}; to go live: upkeep live on",
        )
    elif live:
        yield ok("deployments", f"{count}; {state}")
    else:
        yield ok("deployments", f"{count}; {state} (until step 7 of docs/deploying.md: going live)")


def _first_deploy(intent: ScheduleIntent) -> str:
    """What `prefect deploy` does to the schedules of deployments it creates."""
    if intent.unread:
        return f"{SCHEDULES_VARIABLE} could not be read ({intent.unread})"
    if not intent.deploys:
        return (
            f"with {SCHEDULES_VARIABLE} {intent.shown}, `prefect deploy` fails on the scheduled deployments"
        )
    if intent.active is None:
        return (
            f"{SCHEDULES_VARIABLE} is null, which Prefect leaves out: `prefect deploy` creates the schedules "
            "ACTIVE (live as soon as a worker runs)"
        )
    if intent.active:
        return (
            f"with {SCHEDULES_VARIABLE} {intent.shown}, `prefect deploy` creates the schedules ACTIVE "
            "(live as soon as a worker runs)"
        )
    return f"with {SCHEDULES_VARIABLE} {intent.shown}, `prefect deploy` creates the schedules paused"


# -- this checkout's flows -----------------------------------------------------------------------------
def check_flows(found: Findings) -> Iterator[Check]:
    """What `prefect deploy` and every worker's flow run load, loaded the way Prefect loads it (as a
    script, its own directory first on sys.path), in a process of its own: a .venv that lags its
    checkout, or a module of upkeep/ shadowing a library, passes every other check while each flow run
    crashes on import."""
    import subprocess
    import sys

    load = (
        "from prefect.utilities.importtools import import_object\n"
        "import_object('upkeep/entrypoints.py:product_update')"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", load],
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        yield fail("flows", "loading upkeep/entrypoints.py took over 60 s", "see `python -X importtime`")
        return
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        yield fail(
            "flows",
            f"upkeep/entrypoints.py does not load: {_one_line(lines[-1] if lines else 'no message')}",
            "install this checkout's dependencies: .venv/bin/pip install -e . (each worker runs its own "
            "checkout and .venv)",
        )
        return
    yield ok("flows", "upkeep/entrypoints.py loads as Prefect loads it (deployments, workers' flow runs)")


# -- file server --------------------------------------------------------------------------------------
def check_fileserver(found: Findings) -> Iterator[Check]:
    settings = found.settings
    assert settings is not None
    url = settings.fileserver_url
    parts = urlsplit(url)
    if parts.scheme == "http":
        if not settings.fileserver_allow_http:
            yield fail(
                "file server tls",
                f"{_bare(url)} is plain http",
                "use https:// (or, in a lab only, set UPKEEP_FILESERVER_ALLOW_HTTP=true)",
            )
            return
        yield warn(
            "file server tls",
            f"{_bare(url)} is plain http (allowed by fileserver_allow_http)",
            "use https:// outside a lab",
        )
    else:
        tls = _tls(settings, parts.hostname or "", parts.port or 443)
        yield tls
        if tls.status == "fail":
            yield skip("file server login", "not tried: TLS failed")
            yield skip("release index", "not tried: TLS failed")
            return
    yield from _login_and_index(settings)


def _tls(settings: Settings, host: str, port: int) -> Check:
    ca = settings.fileserver_ca
    if ca is not None and not ca.is_file():
        return fail(
            "file server tls",
            f"CA bundle {ca} does not exist",
            "set UPKEEP_FILESERVER_CA to the CA bundle that signed the file server's certificate",
        )
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (ssl.SSLError, OSError) as exc:
        return fail(
            "file server tls",
            f"CA bundle {ca}: unusable ({_one_line(str(exc))})",
            "set UPKEEP_FILESERVER_CA to a PEM file holding the CA certificate that signed the file server's",
        )
    trust = f"CA {ca}" if ca else "the system's CAs"
    try:
        with (
            socket.create_connection((host, port), timeout=NET_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return fail(
            "file server tls",
            f"{host}:{port}: certificate does not verify against {trust}: {exc.verify_message}",
            "set UPKEEP_FILESERVER_CA to the CA bundle that signed the file server's certificate",
        )
    except (OSError, ssl.SSLError) as exc:
        return fail(
            "file server tls",
            f"{host}:{port}: cannot connect: {_one_line(str(exc) or type(exc).__name__)}",
            "is the file server up and UPKEEP_FILESERVER_URL right?",
        )
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])), UTC)
    days = (expires - datetime.now(UTC)).days
    detail = f"{host}:{port}: chain verifies against {trust}; certificate valid until {expires:%Y-%m-%d}"
    if days < CERT_WARN_DAYS:
        return warn("file server tls", f"{detail} ({days} days left)", "renew the file server's certificate")
    return ok("file server tls", detail)


def _login_and_index(settings: Settings) -> Iterator[Check]:
    import httpx

    from upkeep.cli_release import INDEX, ReleaseError, parse_index

    user = settings.fileserver_user
    ca = settings.fileserver_ca
    fix_login = "check UPKEEP_FILESERVER_USER and UPKEEP_FILESERVER_PASSWORD"
    try:
        with httpx.Client(
            base_url=settings.fileserver_url + "/",
            auth=httpx.BasicAuth(user, settings.fileserver_password.get_secret_value()),
            verify=ssl.create_default_context(cafile=str(ca)) if ca else True,
            timeout=NET_TIMEOUT,
            follow_redirects=False,
        ) as http:
            reply = http.get(INDEX)
    except httpx.HTTPError as exc:
        yield fail(
            "file server login",
            f"{_bare(settings.fileserver_url)}: {_one_line(str(exc))}",
            "is the file server up and UPKEEP_FILESERVER_URL right?",
        )
        yield skip("release index", "not tried: the file server did not answer")
        return
    if reply.status_code in (401, 403):
        password = "no password set" if not settings.fileserver_password.get_secret_value() else "password"
        yield fail(
            "file server login", f"user {user!r} refused (HTTP {reply.status_code}; {password})", fix_login
        )
        yield skip("release index", "not tried: login refused")
        return
    yield ok("file server login", f"user {user!r} accepted")
    if reply.status_code != 200:
        yield fail(
            "release index",
            f"{INDEX}: HTTP {reply.status_code} {reply.reason_phrase}",
            f"publish {INDEX} on the file server (or add releases with `upkeep release add`)",
        )
        return
    try:
        entries = parse_index(reply.text, INDEX)
    except ReleaseError as exc:
        yield fail("release index", _one_line(str(exc)), f"fix {INDEX} on the file server")
        return
    newest = entries[-1].version if entries else "none"
    yield ok("release index", f"{INDEX}: {len(entries)} release(s), last listed {newest}")


# -- SSH ----------------------------------------------------------------------------------------------
def check_ssh(found: Findings) -> Iterator[Check]:
    settings = found.settings
    assert settings is not None
    yield _ssh_key(settings.resolved_ssh_key())
    yield _known_hosts(settings.resolved_known_hosts(), found.nodes)


def _ssh_key(path: Path) -> Check:
    import paramiko

    fix = "set UPKEEP_SSH_KEY to the private key (unencrypted, mode 0600) the customer nodes accept"
    if not path.is_file():
        return fail("ssh key", f"{path} does not exist", fix)
    try:
        key = paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        return fail("ssh key", f"{path} is passphrase-protected (Upkeep uses no agent)", fix)
    except (paramiko.SSHException, OSError, ValueError) as exc:
        return fail("ssh key", f"{path}: not a usable private key ({_one_line(str(exc))})", fix)
    if path.stat().st_mode & 0o077:
        return warn(
            "ssh key", f"{path}: readable by others ({oct(path.stat().st_mode & 0o777)})", f"chmod 600 {path}"
        )
    return ok("ssh key", f"{path}: {key.get_name()} {key.fingerprint}")


def _known_hosts(path: Path, nodes: list[NodeRef] | None) -> Check:
    import paramiko

    fix = "set UPKEEP_KNOWN_HOSTS to a file holding every node's (and jump host's) host key"
    if not path.is_file():
        return fail("known_hosts", f"{path} does not exist", fix)
    try:
        keys = paramiko.HostKeys(str(path))
    except (OSError, paramiko.SSHException) as exc:
        return fail("known_hosts", f"{path}: unreadable ({_one_line(str(exc))})", fix)
    if nodes is None:
        return ok("known_hosts", f"{path}: {len(keys)} host key(s); nodes not compared (no inventory read)")
    wanted = {_host_entry(n.address, n.port): n.hostname for n in nodes if n.tunnel is None}
    wanted.update({_host_entry(n.jump[0], n.jump[1]): f"jump {n.jump[0]}" for n in nodes if n.jump})
    missing = [f"{name} ({entry})" for entry, name in wanted.items() if keys.lookup(entry) is None]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return fail(
            "known_hosts",
            f"{path}: no host key for {len(missing)} of {len(wanted)} host(s): "
            f"{', '.join(missing[:5])}{more}",
            f"add them after checking their fingerprints (ssh-keyscan -p PORT ADDRESS >> {path})",
        )
    return ok("known_hosts", f"{path}: host keys for all {len(wanted)} host(s) of the inventory")


def _host_entry(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def check_nodes(found: Findings) -> Iterator[Check]:
    settings = found.settings
    assert settings is not None
    if found.nodes is None:
        yield skip("nodes", "not tried: the inventory could not be read")
        return
    if not found.nodes:
        yield skip("nodes", "the inventory has no nodes")
        return
    from tasks.ssh import SshSettings

    ssh = SshSettings(
        known_hosts=settings.resolved_known_hosts(),
        key_path=settings.resolved_ssh_key(),
        connect_timeout=min(settings.ssh_connect_timeout, NET_TIMEOUT * 2),
    )
    with ThreadPoolExecutor(max_workers=NODE_THREADS) as pool:
        yield from pool.map(lambda node: _node(node, ssh), found.nodes)


def _node(node: NodeRef, ssh: Any) -> Check:
    from flows.plan import Jump, ssh_target
    from tasks.ssh import FabricRunner, RemoteError

    started = time.monotonic()
    name = f"node {node.hostname}"
    jump = Jump(*node.jump) if node.jump else None
    via = f" via {node.jump[2]}@{node.jump[0]}:{node.jump[1]}" if node.jump else ""
    where = f"{node.user}@{node.address}:{node.port}{via}"
    if node.tunnel is not None:
        jump_target = node.tunnel.jump
        where = f"{node.hostname} via tunnel {jump_target.user}@{jump_target.address}:{jump_target.port}"
    try:
        target = node.tunnel or ssh_target(node.hostname, node.address, node.port, node.user, jump)
        runner = FabricRunner(target, ssh)
        try:
            runner.open()
        finally:
            runner.close()
    except RemoteError as exc:
        reason = str(exc).removeprefix(f"{exc.host}: ")
        check = fail(
            name,
            f"{where}: {_one_line(reason)}",
            "is the node up, and do UPKEEP_SSH_KEY / UPKEEP_KNOWN_HOSTS match it?",
        )
    else:
        check = ok(name, f"{where}: logged in, host key verified ({node.cluster})")
    check.seconds = round(time.monotonic() - started, 2)
    return check


# -- mail and alerts ----------------------------------------------------------------------------------
def check_smtp(found: Findings) -> Iterator[Check]:
    from tasks.mail import MailError, SmtpTransport

    settings = found.settings
    assert settings is not None
    if not settings.smtp_host:
        yield warn(
            "smtp",
            f"UPKEEP_SMTP_HOST not set: notices are written as .eml files to {settings.resolved_outbox_dir()}"
            " and reach nobody",
            "to deliver notices, set UPKEEP_SMTP_HOST (and _PORT, _USER, _PASSWORD, _STARTTLS)",
        )
        return
    transport = SmtpTransport(
        host=settings.smtp_host,
        port=settings.smtp_port,
        user=settings.smtp_user,
        password=settings.smtp_password.get_secret_value(),
        starttls=settings.smtp_starttls,
        timeout=NET_TIMEOUT,
    )
    try:
        smtp = transport.connect()
    except MailError as exc:
        yield fail("smtp", _one_line(str(exc)), "check UPKEEP_SMTP_HOST, _PORT, _USER, _PASSWORD, _STARTTLS")
        return
    with contextlib.suppress(Exception):  # the session was accepted; how it ends does not matter here
        smtp.quit()
    login = f", logged in as {settings.smtp_user}" if settings.smtp_user else ""
    tls = ", STARTTLS" if settings.smtp_starttls else ""
    yield ok("smtp", f"{transport.where}: session accepted{tls}{login} (nothing sent)")


def check_alerts(found: Findings) -> Iterator[Check]:
    from tasks.alerts import AppriseChannel, parse_alert_urls

    settings = found.settings
    assert settings is not None
    urls = parse_alert_urls(settings.alert_urls)
    if not urls:
        yield warn(
            "alert urls",
            f"UPKEEP_ALERT_URLS is empty: SRE alerts go to {settings.sre_email} by email only",
            "set UPKEEP_ALERT_URLS to Apprise URLs (chat, pager) that reach the on-call SRE",
        )
        return
    try:
        names = [AppriseChannel(url).name for url in urls]
    except ValueError as exc:  # the settings check refuses these first; kept for a changed rule
        yield fail("alert urls", _one_line(str(exc)), "fix UPKEEP_ALERT_URLS")
        return
    yield ok("alert urls", f"{len(names)} Apprise channel(s): {', '.join(names)} (nothing sent)")


# -- running them -------------------------------------------------------------------------------------
def run_checks(*, nodes: bool = False, on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check in order (`nodes`: also log into each node); `on_check` sees each as it finishes."""
    found = Findings()
    steps: list[tuple[str, Callable[[Findings], Iterator[Check]]]] = [
        ("settings", check_settings),
        ("database", check_database),
        ("prefect api", check_prefect),
        ("flows", check_flows),
        ("file server", check_fileserver),
        ("ssh", check_ssh),
        ("nodes", check_nodes),
        ("smtp", check_smtp),
        ("alert urls", check_alerts),
    ]
    if not nodes:
        steps = [s for s in steps if s[0] != "nodes"]
    try:
        for name, step in steps:
            if found.settings is None and name != "settings":
                _add(found, skip(name, "not tried: the settings do not load"), on_check)
                continue
            with _guard(found, name, on_check):
                started = time.monotonic()
                for check in step(found):
                    if not check.seconds:
                        check.seconds = round(time.monotonic() - started, 2)
                    _add(found, check, on_check)
                    started = time.monotonic()
    finally:
        if found.engine is not None:
            found.engine.dispose()
    return found.checks


def _add(found: Findings, check: Check, on_check: Callable[[Check], None] | None) -> None:
    # Fails closed: whatever a check or an exception message quotes, a URL's userinfo is not shown, nor
    # PREFECT_API_URL's password quoted on its own (httpx's "Invalid port: 'pw'" when it holds a '/').
    import os

    from flows.prefect_api import masked

    api = os.environ.get("PREFECT_API_URL", "")
    check.detail = masked(_USERINFO.sub("//", check.detail), api)
    check.fix = masked(_USERINFO.sub("//", check.fix), api)
    found.checks.append(check)
    if on_check is not None:
        on_check(check)


@contextmanager
def _guard(found: Findings, name: str, on_check: Callable[[Check], None] | None) -> Iterator[None]:
    """A check that raised what it did not expect is a failed check naming the exception, not a crash."""
    try:
        yield
    except Exception as exc:
        _add(
            found,
            fail(
                name,
                f"could not check: {type(exc).__name__}: {_one_line(str(exc))}",
                "see the detail; `upkeep settings` shows what is in force",
            ),
            on_check,
        )


_USERINFO = re.compile(r"//[^/\s@]*@")


def _bare(url: str) -> str:
    """A URL fit to show: no userinfo, no query (either may carry a secret), however the password is
    spelled (flows/prefect_api.py `shown`: an unencoded '/' in it made a port and a path; adv46)."""
    from flows.prefect_api import shown

    return shown(url)


def _db_cause(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
