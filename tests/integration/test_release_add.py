"""`upkeep release add` checks the SHA-256 against the package on the lab's real file server (nginx,
TLS, basic auth): a wrong sum is refused and nothing is written; unreachable is refused unless
--unverified."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from inventory.db import session_scope
from inventory.models import Release

pytestmark = [pytest.mark.lab]


def test_release_add_checks_the_sha256_on_the_file_server(
    lab_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upkeep import cli as cli_module
    from upkeep import cli_common

    monkeypatch.setattr(cli_common, "_opened", {"engine": lab_runtime.engine})
    with session_scope(lab_runtime.engine) as session:
        known = session.exec(select(Release).where(Release.version == "9.10.0")).one()
        package, sha = known.package, known.sha256

    def add(version: str, digest: str, *extra: str) -> Any:
        args = [
            "release",
            "add",
            version,
            "--package",
            package,
            "--sha256",
            digest,
            "--from",
            "9.10.0",
            *extra,
        ]
        return CliRunner().invoke(cli_module.app, args)

    wrong = add("9.11.0", "0" * 64)
    assert (
        wrong.exit_code != 0
        and f"SHA-256 is {sha}" in str(wrong.exception)
        and "nothing was written" in str(wrong.exception)
    )
    assert add("9.11.0", sha).exit_code == 0

    from dataclasses import replace

    lab_runtime.fileserver = replace(lab_runtime.fileserver, url="https://127.0.0.1:9")  # nothing listens
    unreachable = add("9.12.0", sha)
    assert unreachable.exit_code != 0 and "--unverified" in str(unreachable.exception)
    assert add("9.12.0", sha, "--unverified").exit_code == 0
    with session_scope(lab_runtime.engine) as session:
        assert {"9.11.0", "9.12.0"} <= set(session.exec(select(Release.version)))


def test_release_added_unverified_is_audited_as_such(
    lab_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adversarial pass on #21: `--unverified` skipped the check without a trace; the audit read the
    same as a verified add, so nobody could later tell which releases' SHA-256 nobody checked."""
    from inventory.models import AuditEvent
    from upkeep import cli as cli_module
    from upkeep import cli_common

    monkeypatch.setattr(cli_common, "_opened", {"engine": lab_runtime.engine})
    with session_scope(lab_runtime.engine) as session:
        known = session.exec(select(Release).where(Release.version == "9.10.0")).one()
        package, sha = known.package, known.sha256
    args = ["release", "add", "9.13.0", "--package", package, "--sha256", sha, "--from", "9.10.0"]

    result = CliRunner().invoke(cli_module.app, [*args, "--unverified"])

    assert result.exit_code == 0 and "not checked" in result.output
    with session_scope(lab_runtime.engine) as session:
        [event] = session.exec(select(AuditEvent).where(AuditEvent.action == "release.unverified")).all()
    assert event.subject == "release/9.13.0" and event.detail["sha256"] == sha
