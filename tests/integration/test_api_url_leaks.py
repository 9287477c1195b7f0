"""adv46: every line that shows PREFECT_API_URL or a Prefect/httpx error text keeps the URL's userinfo
and query (a proxy's password, a token) off the SRE's screen. adv43 dropped them from the URL the
refusals name, but not from the error text they quote: httpx's HTTPStatusError names the request's full
URL (`for url 'http://127.0.0.1:P/api?token=s3cret/health'`), and so do the lines said once the API
fails after the pre-checks passed (a 5xx on the flow run's creation)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_prefect_api_silent import _prefect_api, _upkeep, home

__all__ = ["home"]


@pytest.fixture
def failing_api() -> Iterator[str]:
    """Answers /health and /admin/version as Prefect does; every other path a 500."""
    with _prefect_api(answers_health=True, others=b"500 Internal Server Error") as url:
        yield url


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("?token=s3cret", id="query-in-the-refusal"),
        pytest.param("", id="userinfo-after-the-prechecks"),
    ],
)
def test_an_api_that_answers_with_an_error_does_not_show_the_urls_credentials(
    failing_api: str, home: Path, secret: str
) -> None:
    api = failing_api.replace("http://", "http://bob:hunter2@") + secret
    code, out, err = _upkeep(home, api, "update", "acme-c1", "--to", "9.9.0")

    assert code == 1, out + err
    assert "hunter2" not in out + err and "s3cret" not in out + err, out + err


def test_a_password_with_an_unencoded_slash_is_not_quoted_by_the_refusal(home: Path) -> None:
    """`http://bob:hunter2/x@127.0.0.1:1/api`: httpx reads `hunter2` as the port and says so ("Invalid
    port: 'hunter2'"); the refusal quoted that message. The URL itself was shown bare."""
    code, out, err = _upkeep(
        home, "http://bob:hunter2/x@127.0.0.1:1/api", "update", "acme-c1", "--to", "9.9.0"
    )

    assert code == 1, out + err
    assert "hunter2" not in out + err, out + err


def test_the_doctor_does_not_quote_a_password_read_as_the_port(tmp_path: Path) -> None:
    """The doctor's 'prefect api' check failed with "could not check: InvalidURL: Invalid port:
    'hunter2'": its fail-closed scrub drops a URL's userinfo, not a password httpx quoted on its own."""
    from tests.support.cli import upkeep_here

    home = tmp_path / "home"
    done = upkeep_here(home, "doctor", PREFECT_API_URL="http://bob:hunter2/x@127.0.0.1:1/api")

    assert "prefect api" in done.stdout, done.stdout + done.stderr
    assert "hunter2" not in done.stdout + done.stderr, done.stdout + done.stderr
