"""flows/prefect_api.py `shown` / `scrubbed`: PREFECT_API_URL, and any URL an exception's message quotes,
reach the SRE's line without userinfo, query or fragment, however the password is spelled (adv46)."""

from __future__ import annotations

import pytest

from flows.prefect_api import scrubbed, shown


@pytest.mark.parametrize(
    ("url", "bare"),
    [
        ("http://user:p%40ss@host/api?token=s3cret#frag", "http://host/api"),
        ("http://[::1]:4200/api", "http://[::1]:4200/api"),
        ("http://user:s3cret@[::1]:4200/api", "http://[::1]:4200/api"),
        ("http://user:p@s3cret@host/api", "http://host/api"),  # an unencoded '@' in the password
        ("http://user:p/s3cret@host/api", "http://host/api"),  # an unencoded '/'
        ("http://user:p?s3cret@host/api", "http://host/api"),
        ("http://user:p#s3cret@host/api", "http://host/api"),
        ("http://user:/s3cret@host/api", "http://host/api"),
        ("http://user:1/s3cret@host:4200/api", "http://host:4200/api"),  # read as host `user`, port 1
        ("user:s3cret@host:4200/api", "host:4200/api"),  # no scheme
        ("host:4200/api", "host:4200/api"),
        ("http://host:4200/api?email=s3cret@example.com", "http://host:4200/api"),
        (
            "https://api.prefect.cloud/api/accounts/a/workspaces/b",
            "https://api.prefect.cloud/api/accounts/a/workspaces/b",
        ),
    ],
)
def test_a_shown_url_keeps_no_credentials_and_the_host(url: str, bare: str) -> None:
    assert shown(url) == bare


@pytest.mark.parametrize(
    "text",
    [
        "Server error '500 Internal Server Error' for url 'http://127.0.0.1:1/api?token=s3cret/health'",
        "Client error '404' for url 'http://user:p/s3cret@host/api/x'",
        "ConnectError for http://user:p@s3cret@host/api and more",
    ],
)
def test_a_scrubbed_message_keeps_no_credentials(text: str) -> None:
    assert "s3cret" not in scrubbed(text)


@pytest.mark.parametrize(
    "url",
    ["http://bob:1/s3cret@127.0.0.1:1/api", "http://bob:p/s3cret@127.0.0.1:1/api", "http://b:p@s3cret@h/api"],
)
def test_the_doctor_shows_prefect_api_url_without_a_password_that_holds_a_slash(url: str) -> None:
    """upkeep/doctor.py `_bare` (its 'prefect api' line and fix) showed `http://bob:1/s3cret@127.0.0.1:1/api`
    as it is: an unencoded '/' in the password makes a numeric port and a path of the rest."""
    from upkeep.doctor import _bare

    assert "s3cret" not in _bare(url)
