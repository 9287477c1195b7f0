"""X-Forwarded-For is believed only from the proxies in UPKEEP_PORTAL_TRUSTED_PROXIES (uvicorn's
forwarded_allow_ips), against the real `upkeep portal serve`: by default a client on loopback cannot
make itself a new client for the per-client sign-in limit (10 requests per 15 minutes) by sending a
different X-Forwarded-For each time; behind a trusted proxy, its X-Forwarded-For names the client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.portal.test_portal_browser import INVENTORY
from tests.support.portal import portal_served


@contextmanager
def served_with(tmp_path: Path, **settings: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env |= {"UPKEEP_HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"}
    env |= {f"UPKEEP_{key.upper()}": value for key, value in settings.items()}
    with portal_served(tmp_path, env, INVENTORY) as url:
        yield url


def ask_for_links(url: str, forwarded_for: list[str]) -> list[int]:
    """One sign-in request per X-Forwarded-For value, each from a fresh browser; the status codes."""
    codes = []
    for address in forwarded_for:
        with httpx.Client(base_url=url, timeout=10) as client:
            page = client.get("/signin")
            csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            response = client.post(
                "/signin",
                data={"csrf": csrf, "email": "nobody@elsewhere.example"},
                headers={"X-Forwarded-For": address},
            )
            codes.append(response.status_code)
    return codes


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"], ids=["no-proxy-trusted", "loopback-proxy-trusted"])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path: Path, trusted: str) -> None:
    spoofed = [f"203.0.113.{n}" for n in range(1, 12)]  # 11 "clients", one more than the limit
    with served_with(tmp_path, portal_trusted_proxies=trusted) as url:
        codes = ask_for_links(url, spoofed)
        if not trusted:  # all from 127.0.0.1, whatever they claim: the 11th is refused
            assert codes == [200] * 10 + [429], codes
        else:  # the proxy names 11 clients: none is over the limit, but one client still is
            assert codes == [200] * 11, codes
            assert ask_for_links(url, ["198.51.100.7"] * 11) == [200] * 10 + [429]
