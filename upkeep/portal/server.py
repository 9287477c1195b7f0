"""Serving the portal with uvicorn (`upkeep portal serve`)."""

from __future__ import annotations

import logging
import re

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


def serve(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    from upkeep.bootstrap import open_database
    from upkeep.portal.app import create_app
    from upkeep.portal.config import from_settings

    app = create_app(from_settings(settings, engine=open_database(settings)))
    config = uvicorn.Config(
        app, host=host, port=port, proxy_headers=True, server_header=False, log_level="info"
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.access").addFilter(HideQueries())  # after uvicorn configured logging
    server.run()
