"""`upkeep doctor`'s SMTP check against a real SMTP server (aiosmtpd): it opens a session and sends
nothing; a server that is not there is a failed check naming it, with what to set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from upkeep.doctor import Findings, check_smtp
from upkeep.settings import load_settings


def _checked(tmp_path: Path, port: int) -> list[Any]:
    settings = load_settings(home=tmp_path, smtp_host="127.0.0.1", smtp_port=port)
    return list(check_smtp(Findings(settings=settings)))


def test_a_server_that_answers_is_ok_and_is_sent_nothing(smtp: Any, tmp_path: Path) -> None:
    [check] = _checked(tmp_path, smtp.port)
    assert (check.name, check.status) == ("smtp", "ok")
    assert check.detail == f"SMTP 127.0.0.1:{smtp.port}: session accepted (nothing sent)"
    assert smtp.handler.messages == []


def test_a_server_that_is_not_there_fails_naming_it_and_what_to_set(smtp: Any, tmp_path: Path) -> None:
    smtp.stop()
    [check] = _checked(tmp_path, smtp.port)
    assert (check.name, check.status) == ("smtp", "fail"), check
    assert f"127.0.0.1:{smtp.port}" in check.detail and "\n" not in check.detail
    assert check.fix == "check UPKEEP_SMTP_HOST, _PORT, _USER, _PASSWORD, _STARTTLS"


def test_no_smtp_host_is_a_warning_that_notices_reach_nobody(tmp_path: Path) -> None:
    [check] = list(check_smtp(Findings(settings=load_settings(home=tmp_path))))
    assert (check.name, check.status) == ("smtp", "warn")
    assert "reach nobody" in check.detail and "UPKEEP_SMTP_HOST" in check.fix
