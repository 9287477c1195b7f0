"""`upkeep demo --keep` (`make demo KEEP=1`) leaves the portal up: `serve_demo_portal` starts the real
`upkeep portal serve` on the demo's home in a session of its own, and the sign-in link the demo prints
for it signs the demo user in; the next demo (`stop_demo_portal`) stops it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import yaml

from inventory.importer import import_inventory
from tests.portal.test_portal_browser import INVENTORY
from upkeep.database import open_database
from upkeep.demo import PORTAL_PID, _portal_hints, serve_demo_portal, stop_demo_portal
from upkeep.lab import procs
from upkeep.settings import load_settings


def test_the_kept_portal_answers_the_printed_link_and_the_next_demo_stops_it(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    home.mkdir()
    settings = load_settings(home=home, database_url=f"sqlite:///{home / 'upkeep.db'}")
    engine = open_database(settings)
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(INVENTORY, sort_keys=False))
    import_inventory(path, engine=engine, actor="demo")

    url, pid = serve_demo_portal(settings, home)
    try:
        assert procs.alive(pid) and os.getsid(pid) == pid  # its own session: it outlives the demo
        hints = _portal_hints(settings, engine, f"UPKEEP_HOME={home}", url)
        assert hints[0].startswith(f"portal    served at {url}; sign in as ann@acme.example")
        [link] = re.findall(r"http://127\.0\.0\.1:\d+/signin/link\?t=\S+", hints[1])
        with httpx.Client(timeout=10) as browser:
            page = browser.get(link)
            assert page.status_code == 200 and "ann@acme.example" in page.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            token = re.search(r'name="t" value="([^"]+)"', page.text)
            assert csrf and token
            signed_in = browser.post(
                f"{url}/signin/link", data={"csrf": csrf.group(1), "t": token.group(1)}, follow_redirects=True
            )
            assert signed_in.url.path == "/maintenance" and "Upcoming maintenance for acme" in signed_in.text
    finally:
        stop_demo_portal(home)
    assert not procs.alive(pid) and not (home / PORTAL_PID).exists()
    stop_demo_portal(home)  # nothing left: nothing to do
