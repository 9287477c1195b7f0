"""The composition root: settings in, a flow Runtime out. The only place adapters are built."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy.engine import Engine

from flows import runtime as flow_runtime
from flows.runtime import Runtime
from tasks.alerts import AlertChannel, AppriseChannel, EmailChannel, parse_alert_urls
from tasks.fileserver import HttpFileServer
from tasks.mail import MailTransport, OutboxDirTransport, SmtpTransport
from tasks.ssh import SshSettings
from upkeep.database import open_database
from upkeep.settings import Settings, SettingsError, load_settings


def build_runtime(settings: Settings, *, engine: Engine | None = None) -> Runtime:
    work_dir = settings.work_dir()
    work_dir.mkdir(parents=True, exist_ok=True)
    mailer = build_mailer(settings)
    return Runtime(
        engine=engine or open_database(settings),
        fileserver=build_fileserver(settings),
        ssh=SshSettings(
            known_hosts=settings.resolved_known_hosts(),
            key_path=settings.resolved_ssh_key(),
            connect_timeout=settings.ssh_connect_timeout,
        ),
        work_dir=work_dir,
        mailer=mailer,
        mail_from=settings.mail_from,
        sre_email=settings.sre_email,
        alert_channels=build_alert_channels(settings, mailer),
        oncall_escalate_after=timedelta(minutes=settings.oncall_escalate_minutes),
        support_contact=settings.support_contact,
        portal_url=settings.portal_url,
        portal_key=portal_key(settings),
        per_node_estimate=timedelta(minutes=settings.per_node_minutes),
        tunnel_wait=timedelta(minutes=settings.tunnel_wait_minutes),
        run_lease=timedelta(seconds=settings.run_lease_seconds),
        start_lease=timedelta(seconds=settings.start_lease_seconds),
        cluster_limit=settings.cluster_limit,
        prefect_answer_seconds=settings.prefect_answer_seconds,
        command_timeout=settings.ssh_command_timeout,
        health_timeout=settings.health_timeout,
        actor=os.environ.get("USER", "upkeep"),
        escalation_manager=settings.escalation_manager,
        escalation_update_cadence=settings.escalation_update_cadence,
    )


def portal_key(settings: Settings) -> Callable[[], bytes]:
    """The portal key, read (or made, in <home>/portal.key) once, when a notice first needs a link. A key
    that cannot be read or is too short leaves the links unsigned - still working, behind a sign-in -
    with a warning: a notice must not fail for it (`upkeep portal serve` refuses to start with it)."""
    found: list[bytes] = []

    def key() -> bytes:
        if not found:
            try:
                found.append(settings.resolved_portal_secret())
            except (SettingsError, OSError) as exc:
                logging.getLogger(__name__).warning("portal links in notices are unsigned: %s", exc)
                found.append(b"")
        return found[0]

    return key


def build_fileserver(settings: Settings) -> HttpFileServer:
    return HttpFileServer(
        url=settings.fileserver_url,
        user=settings.fileserver_user,
        password=settings.fileserver_password.get_secret_value(),
        ca=settings.fileserver_ca,
        allow_http=settings.fileserver_allow_http,
    )


def build_alert_channels(settings: Settings, mailer: MailTransport) -> tuple[AlertChannel, ...]:
    """The SRE mailbox (when set) and every UPKEEP_ALERT_URLS entry."""
    channels: list[AlertChannel] = [EmailChannel(mailer, settings.mail_from, settings.sre_email)]
    channels = channels if settings.sre_email else []
    return (*channels, *(AppriseChannel(url) for url in parse_alert_urls(settings.alert_urls)))


def build_mailer(settings: Settings) -> MailTransport:
    """SMTP when a host is set; otherwise the embedded default, .eml files in the outbox dir."""
    if settings.smtp_host:
        return SmtpTransport(
            host=settings.smtp_host,
            port=settings.smtp_port,
            user=settings.smtp_user,
            password=settings.smtp_password.get_secret_value(),
            starttls=settings.smtp_starttls,
        )
    return OutboxDirTransport(settings.resolved_outbox_dir())


def configure_from_settings() -> None:
    """Flows in this process build their Runtime from UPKEEP_* settings on first use."""
    flow_runtime.configure(lambda: build_runtime(load_settings()))


@contextmanager
def quiet_prefect() -> Iterator[None]:
    """Prefect settings for flows run from the CLI: no 1 s heartbeat wait at the end of each run, and
    (without `--verbose`) none of Prefect's own log lines on the terminal: the CLI shows progress from
    our record (upkeep/progress.py) and the outcome; the Prefect UI keeps every line, tracebacks too."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    temporary_server_dies_with_us()
    silence_prefect_console()
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def silence_prefect_console() -> None:
    """Without `--verbose`, none of Prefect's own log lines on the terminal from here on (its console
    handlers filtered; see `_OnlyOurWarnings`). Not restored after: the temporary server's "Stopping
    ..." line comes at the process's exit. Idempotent."""
    from upkeep.console import verbose

    if not verbose():
        _silence_console_logs()


def _silence_console_logs() -> list[tuple[logging.Handler, logging.Filter]]:
    """Filter every Prefect console handler (its API log handler, the UI's, is left alone) so that
    only Upkeep's own warnings reach the terminal; returns what to remove to restore. A handler
    filtered already is left as it is."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    silenced: list[tuple[logging.Handler, logging.Filter]] = []
    for handler in {id(h): h for logger in loggers for h in logger.handlers}.values():
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _OnlyOurWarnings) for f in handler.filters
        ):
            only_ours = _OnlyOurWarnings()
            handler.addFilter(only_ours)
            silenced.append((handler, only_ours))
    return silenced


class _OnlyOurWarnings(logging.Filter):
    """Passes what an operator must see even without `--verbose`: Upkeep's own warnings (loggers
    `upkeep.*`, through Prefect's `get_logger`, e.g. "Prefect UI: progress 1/3 not written") and the
    warnings our flows log on their run logger (e.g. "waits for approval: `upkeep approve 3`"). Not
    Prefect's INFO lines, and no traceback: an error's record is shortened to its message, since the
    CLI ends with its own one-line verdict and the Prefect UI keeps the full record."""

    OURS = ("prefect.upkeep", "upkeep", "prefect.flow_runs")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not record.name.startswith(self.OURS):
            return False
        record.exc_info = None
        record.exc_text = None
        return True


def temporary_server_dies_with_us() -> None:
    """Without PREFECT_API_URL, Prefect starts a temporary server (uvicorn, ~240 MB) as a child and
    stops it at exit; a kill -9 skips that and the server lived on under PID 1. Started from the main
    thread (the CLI's case), the child now gets SIGTERM from the kernel when this process dies
    (PR_SET_PDEATHSIG), however it dies. Idempotent; nothing to do with an API URL set."""
    import sys

    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        return
    from prefect.server.api import server

    if not isinstance(server.subprocess, _ChildrenDieWithUs):
        server.subprocess = _ChildrenDieWithUs()  # type: ignore[assignment]


class _ChildrenDieWithUs:
    """The `subprocess` module as Prefect's server module sees it: Popen from the main thread gives
    the child a parent-death signal (a worker thread's exit would deliver it too early)."""

    def __getattr__(self, name: str) -> object:
        import subprocess

        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: object, **kwargs: object) -> object:
        import subprocess
        import threading

        if threading.current_thread() is threading.main_thread() and "preexec_fn" not in kwargs:
            kwargs["preexec_fn"] = _die_with_parent(os.getpid())
        return subprocess.Popen(*args, **kwargs)  # type: ignore[call-overload]


def _die_with_parent(parent: int) -> object:
    def arm() -> None:  # runs in the child, between fork and exec
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm
