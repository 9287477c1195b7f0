"""End to end in a real browser: Debian's chromium driven by Playwright against `upkeep portal serve`
(uvicorn), a real SMTP server (aiosmtpd) for the sign-in link and the notices, the lab's real HTTPS file
server (nginx) for a download, and the real CLI for the inventory, the schedule and what the SRE sees
afterwards. Nothing is downloaded from outside: the browser is the system's (`executable_path`), never
`playwright install`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_notices import SmtpServer
from tests.support.cli import upkeep_in_process
from tests.support.portal import portal_served, wait_for

pytestmark = [pytest.mark.smtp, pytest.mark.browser, pytest.mark.lab]
PACKAGE = secrets.token_bytes(300_000)  # the release the designated user downloads

INVENTORY: dict[str, Any] = {
    "customers": [
        {
            "name": "acme",
            "timezone": "America/New_York",
            "contacts": [{"email": "ops@acme.example"}],
            "clusters": [
                {
                    "name": "acme-c1",
                    "kind": "software",
                    "version": "9.8.0",
                    "access": {"type": "direct"},
                    "nodes": [{"hostname": "acme-c1-n1"}, {"hostname": "acme-c1-n2"}],
                    "windows": [{"days": "tue,thu", "start": "02:00", "duration": "4h"}],
                }
            ],
            "portal_users": [{"email": "ann@acme.example", "name": "Ann"}, {"email": "bob@acme.example"}],
        }
    ],
    "releases": [
        {
            "version": "9.9.0",
            "package": "releases/p-9.9.0.tar.gz",
            "sha256": hashlib.sha256(PACKAGE).hexdigest(),
            "from": ["9.8.0"],
        }
    ],
}


@pytest.fixture
def fileserver(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The lab's HTTPS file server (nginx, basic auth, its own CA) holding the release; its settings."""
    from upkeep.lab import procs
    from upkeep.lab.fileserver import USER, FileServer

    server = FileServer(tmp_path / "fileserver")
    password = server.prepare()
    port = server.start(procs.free_ports(1)[0])
    (server.root / "releases" / "p-9.9.0.tar.gz").write_bytes(PACKAGE)
    try:
        yield {
            "UPKEEP_FILESERVER_URL": f"https://127.0.0.1:{port}",
            "UPKEEP_FILESERVER_USER": USER,
            "UPKEEP_FILESERVER_PASSWORD": password,
            "UPKEEP_FILESERVER_CA": str(server.ca),
        }
    finally:
        server.stop()


@pytest.fixture
def served(
    tmp_path: Path, smtp: SmtpServer, fileserver: dict[str, str]
) -> Iterator[tuple[str, dict[str, str]]]:
    """The portal served by the real CLI on a free loopback port; (its URL, the CLI's environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env |= {
        "UPKEEP_HOME": str(tmp_path / "home"),
        "UPKEEP_SMTP_HOST": "127.0.0.1",
        "UPKEEP_SMTP_PORT": str(smtp.port),
        "UPKEEP_MAIL_FROM": "Upkeep <upkeep@vendor.example>",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env |= fileserver
    with portal_served(tmp_path, env, INVENTORY) as url:
        yield url, env


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: run `make debian-packages` (as root)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_sign_in_from_the_email_defer_and_open_a_case(
    served: tuple[str, dict[str, str]], smtp: SmtpServer, browser: Any
) -> None:
    url, env = served
    scheduled = json.loads(
        upkeep_in_process("schedule", "acme-c1", "--to", "9.9.0", "--json", env=env, check=True).stdout
    )
    run_id = scheduled["id"]
    page = browser.new_page()
    page.set_default_timeout(30_000)

    page.goto(f"{url}/signin")
    page.fill("#email", "Ann@acme.example")
    page.click("text=Email me a sign-in link")
    page.wait_for_load_state()
    assert "Check your email" in page.content(), page.content()

    def sign_in_mail() -> Any:
        return next((m for m in smtp.handler.messages if "sign-in link" in str(m["Subject"])), None)

    mail = wait_for(sign_in_mail, "the sign-in email")
    assert str(mail["To"]) == "ann@acme.example"
    [link] = re.findall(
        r"http://127\.0\.0\.1:\d+/signin/link\?t=\S+", mail.get_body(("plain",)).get_content()
    )
    page.goto(link)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Upcoming maintenance for acme')")
    assert "acme-c1" in page.inner_text("main")

    page.click("text=Confirm or defer")
    before = page.inner_text("#start")
    choices = page.locator("input[name=start]")
    assert choices.count() >= 1
    chosen = choices.nth(choices.count() - 1)
    new_start = chosen.get_attribute("value")
    label = page.locator("label.choice").nth(choices.count() - 1).inner_text().strip()
    chosen.check()
    page.click("button:has-text('Defer')")
    page.wait_for_selector("text=The update was deferred")
    assert page.inner_text("#start") == label != before
    assert "1 used, 1 left" in page.inner_text("main")

    shown = json.loads(upkeep_in_process("show", str(run_id), "--json", env=env, check=True).stdout)
    assert shown["deferrals"]["used"] == 1
    assert shown["slot"]["start"] == new_start
    assert [n["kind"] for n in shown["notices"]] == ["scheduled", "deferred"]

    # Every designated user (and the contact) gets the deferral notice through the usual outbox.
    upkeep_in_process("notices", "send", env=env, check=True)
    deferred = [m for m in smtp.handler.messages if str(m["Subject"]).startswith("Upgrade deferred")]
    assert len(deferred) == 1
    assert {a.strip() for a in str(deferred[0]["To"]).split(",")} == {
        "ops@acme.example",
        "ann@acme.example",
        "bob@acme.example",
    }

    # The notice's signed link (text part) opens the update in the browser; Confirm there sends the
    # usual notice with the invite at the next SEQUENCE.
    [notice_link] = re.findall(
        rf"http://127\.0\.0\.1:\d+/maintenance/update-{run_id}\?k=[\w.-]+",
        deferred[0].get_body(("plain",)).get_content(),
    )
    page.goto(notice_link)
    assert page.inner_text("#start") == label
    page.click("button:has-text('Confirm this time')")
    page.wait_for_selector("text=your confirmation was recorded")
    upkeep_in_process("notices", "send", env=env, check=True)
    [confirmed] = [m for m in smtp.handler.messages if str(m["Subject"]).startswith("Upgrade confirmed")]
    [invite] = [part for part in confirmed.walk() if part.get_content_type() == "text/calendar"]
    assert "SEQUENCE:3" in invite.get_content()  # scheduled 1, deferred 2, confirmed 3

    page.click("nav >> text=Cases")
    page.select_option("#priority", "P1")
    page.select_option("#cluster", "acme-c1")
    page.fill("#subject", "Reports are slow since the upgrade")
    page.fill("#description", "Since Tuesday, the nightly report takes 3 h instead of 1 h.")
    page.click("button:has-text('Open the case')")
    page.wait_for_selector("text=The case was opened")
    cases = json.loads(upkeep_in_process("case", "list", "--json", env=env, check=True).stdout)
    [case] = [c for c in cases if c["subject"] == "Reports are slow since the upgrade"]
    assert case["priority"] == "P1" and case["opened_by"] == "ann@acme.example"
    assert case["id"] in page.inner_text("main") and case["clusters"] == ["acme-c1"]

    # Download the release through the portal (streamed from the file server, checked there) and
    # verify it against the SHA-256 the page shows.
    page.click("nav >> text=Downloads")
    shown = page.inner_text("main")
    sha256 = hashlib.sha256(PACKAGE).hexdigest()
    assert "9.9.0" in shown and sha256 in shown and "127.0.0.1" not in shown
    with page.expect_download() as started:
        page.click("text=p-9.9.0.tar.gz")
    download = started.value
    assert download.suggested_filename == "p-9.9.0.tar.gz"
    saved = Path(str(download.path()))
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == sha256
    assert env["UPKEEP_FILESERVER_PASSWORD"] not in page.content()

    page.click("button:has-text('Sign out')")
    page.wait_for_selector("text=You have signed out")
    page.goto(f"{url}/maintenance")
    assert page.url.endswith("/signin")


@pytest.fixture
def served_without_files(tmp_path: Path, smtp: SmtpServer) -> Iterator[tuple[str, dict[str, str]]]:
    """`served` without the file server (nothing here downloads)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env |= {
        "UPKEEP_HOME": str(tmp_path / "home"),
        "UPKEEP_SMTP_HOST": "127.0.0.1",
        "UPKEEP_SMTP_PORT": str(smtp.port),
        "UPKEEP_MAIL_FROM": "Upkeep <upkeep@vendor.example>",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    with portal_served(tmp_path, env, INVENTORY) as url:
        yield url, env


def test_a_stalled_update_reads_stopped_for_now_in_the_browser(
    served_without_files: tuple[str, dict[str, str]], smtp: SmtpServer, browser: Any
) -> None:
    """The designated user signed in sees their stalled update under 'Stopped for now' with where each
    node stands - not a page with nothing on it - and never the SRE's reason."""
    from sqlmodel import create_engine, select

    from inventory.db import session_scope
    from inventory.models import Node, NodeStep, RunState, StepState, UpgradeRun

    url, env = served_without_files
    scheduled = json.loads(
        upkeep_in_process("schedule", "acme-c1", "--to", "9.9.0", "--json", env=env, check=True).stdout
    )
    engine = create_engine(f"sqlite:///{Path(env['UPKEEP_HOME']) / 'upkeep.db'}")
    try:
        with session_scope(engine) as session:  # as flows/outcomes.py `_stalled` leaves it, node 1 done
            run = session.get(UpgradeRun, scheduled["id"])
            assert run is not None
            node = session.exec(select(Node).where(Node.hostname == "acme-c1-n1")).one()
            for step, tail in (("check", "9.8.0"), ("upgrade", ""), ("verify", "9.9.0")):
                done = StepState.succeeded
                session.add(NodeStep(run_id=run.id, node_id=node.id, step=step, state=done, output_tail=tail))
            run.state, run.reason = RunState.paused, "stalled: no node upgraded in 3 windows; 10.0.0.7"
            session.add(run)
    finally:
        engine.dispose()

    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{url}/signin")
    page.fill("#email", "ann@acme.example")
    page.click("text=Email me a sign-in link")

    def sign_in_mail() -> Any:
        return next((m for m in smtp.handler.messages if "sign-in link" in str(m["Subject"])), None)

    mail = wait_for(sign_in_mail, "the sign-in email")
    [link] = re.findall(
        r"http://127\.0\.0\.1:\d+/signin/link\?t=\S+", mail.get_body(("plain",)).get_content()
    )
    page.goto(link)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h2:has-text('Stopped for now')")
    stopped = page.inner_text(f"#update-{scheduled['id']}")
    assert "acme-c1: 9.8.0 → 9.9.0" in stopped and "Our engineers will contact you" in stopped, stopped
    assert "1 of 2 nodes run 9.9.0" in stopped and "9.8.0 (not upgraded)" in stopped, stopped
    assert "10.0.0.7" not in page.content() and "stalled" not in page.inner_text("main")


def test_the_started_mails_link_shows_the_update_in_progress_then_where_it_ended(
    served_without_files: tuple[str, dict[str, str]], smtp: SmtpServer, browser: Any
) -> None:
    """The customer who got the 'started' mail follows its link (real uvicorn, real SMTP, chromium):
    after the sign-in it opens the update in progress, node by node; an SRE's pause still reads in
    progress, never their reason; once the run ended, reloading the open page shows its History entry."""
    from datetime import UTC, datetime

    from sqlmodel import create_engine, select

    from flows.run_notices import VendorTerms, queue_run_notice
    from inventory.db import session_scope
    from inventory.models import Node, NodeStep, RunState, StepState, UpgradeRun
    from inventory.runs import finish_run
    from upkeep.settings import Settings

    url, env = served_without_files
    scheduled = json.loads(
        upkeep_in_process("schedule", "acme-c1", "--to", "9.9.0", "--json", env=env, check=True).stdout
    )
    run_id = scheduled["id"]
    home = Path(env["UPKEEP_HOME"])
    key = Settings(home=home).resolved_portal_secret()  # made by the portal when it started
    vendor = VendorTerms(
        "upkeep@vendor.example", "support@vendor.example", portal_url=url, portal_key=lambda: key
    )
    engine = create_engine(f"sqlite:///{home / 'upkeep.db'}")

    def steps(hostname: str, *done: tuple[str, str]) -> None:
        with session_scope(engine) as session:
            node = session.exec(select(Node).where(Node.hostname == hostname)).one()
            for step, tail in done:
                session.add(
                    NodeStep(
                        run_id=run_id, node_id=node.id, step=step, state=StepState.succeeded, output_tail=tail
                    )
                )

    try:
        steps("acme-c1-n1", ("check", "9.8.0"), ("upgrade", ""), ("verify", "9.9.0"))
        steps("acme-c1-n2", ("check", "9.8.0"))
        with session_scope(engine) as session:  # under way in its slot, as the flow leaves it
            run = session.get(UpgradeRun, run_id)
            assert run is not None and run.slot_start is not None
            run.state, run.started_at = RunState.running, run.slot_start
            session.add(run)
            # queued now (due now: `notices send` sends what is due), as mark_started does
            assert queue_run_notice(run, "started", session=session, now=datetime.now(UTC), vendor=vendor)
        upkeep_in_process("notices", "send", env=env, check=True)

        def started_mail() -> Any:
            return next(
                (m for m in smtp.handler.messages if str(m["Subject"]).startswith("Upgrade started")), None
            )

        mail = wait_for(started_mail, "the 'started' email")
        [notice_link] = re.findall(
            rf"http://127\.0\.0\.1:\d+/maintenance/update-{run_id}\?k=[\w.-]+",
            mail.get_body(("plain",)).get_content(),
        )
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(notice_link)  # signed out: sign in first, then back to the update
        page.fill("#email", "ann@acme.example")
        page.click("text=Email me a sign-in link")

        def sign_in_mail() -> Any:
            return next((m for m in smtp.handler.messages if "sign-in link" in str(m["Subject"])), None)

        mail = wait_for(sign_in_mail, "the sign-in email")
        [link] = re.findall(
            r"http://127\.0\.0\.1:\d+/signin/link\?t=\S+", mail.get_body(("plain",)).get_content()
        )
        page.goto(link)
        page.click("button:has-text('Sign in')")
        page.wait_for_selector("h1:has-text('Upgrade of acme-c1 to 9.9.0: in progress')")
        shown = page.inner_text("main")
        assert "1 of 2 nodes run 9.9.0" in shown, shown
        assert re.search(r"acme-c1-n1\s+9\.9\.0", shown) and re.search(
            r"acme-c1-n2\s+being upgraded now", shown
        )
        assert page.locator("button").filter(has_text="Confirm").count() == 0

        with session_scope(engine) as session:  # an SRE pauses it
            run = session.get(UpgradeRun, run_id)
            assert run is not None
            run.state, run.reason = RunState.paused, "paused by bob: 10.0.0.7 disk full"
            session.add(run)
        page.reload()
        page.wait_for_selector("h1:has-text('in progress')")
        assert "10.0.0.7" not in page.content() and "bob" not in page.inner_text("main")

        steps("acme-c1-n2", ("upgrade", ""), ("verify", "9.9.0"))
        with session_scope(engine) as session:  # resumed and completed while the page is open
            run = session.get(UpgradeRun, run_id)
            assert run is not None
            finish_run(run, RunState.succeeded, session=session)
        page.reload()
        page.wait_for_selector("h1:has-text('Upgrade of acme-c1 to 9.9.0: succeeded')")
        assert "History" in page.inner_text("main") and "in progress" not in page.inner_text("main")
    finally:
        engine.dispose()
