"""Serving the portal with uvicorn (`upkeep portal serve`)."""

from __future__ import annotations

import logging
import re
from typing import Any

from upkeep.settings import Settings

_QUERY = re.compile(r"\?.*$")
_FEED = re.compile(r"/feed/[^/?]*\.ics")  # the calendar feed's secret token is its path


class HideQueries(logging.Filter):
    """uvicorn's access log without query strings or calendar feed tokens: a sign-in link's token must
    not sit in a log file where someone could use it before its owner does, nor a feed's secret path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            path = args[2]
            if isinstance(path, str):
                args[2] = _FEED.sub("/feed/….ics", _QUERY.sub("?…", path))
                record.args = tuple(args)
        return True


def proxies(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy options. X-Forwarded-For/-Proto are believed only from the addresses in
    UPKEEP_PORTAL_TRUSTED_PROXIES (uvicorn's forwarded_allow_ips: IPs or CIDRs): a client that may
    set its own X-Forwarded-For would make itself a new client for the per-client sign-in limit on
    every request, and claim https. Empty (the default): never believed, the peer's address counts.
    (uvicorn's own default trusts 127.0.0.1, i.e. anyone who can reach a loopback-bound portal.)"""
    trusted = settings.portal_trusted_proxies.strip()
    if not trusted:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": trusted}


def serve(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    from upkeep.database import open_database
    from upkeep.portal.app import create_app
    from upkeep.portal.config import from_settings

    app = create_app(from_settings(settings, engine=open_database(settings)))
    config = uvicorn.Config(
        app, host=host, port=port, server_header=False, log_level="info", **proxies(settings)
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.access").addFilter(HideQueries())  # after uvicorn configured logging
    server.run()
