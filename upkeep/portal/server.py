"""Serving the portal with uvicorn (`upkeep portal serve`)."""

from __future__ import annotations

from upkeep.settings import Settings


def serve(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    from upkeep.bootstrap import open_database
    from upkeep.portal.app import create_app
    from upkeep.portal.config import from_settings

    app = create_app(from_settings(settings, engine=open_database(settings)))
    # proxy_headers: behind a TLS proxy on this host, X-Forwarded-Proto makes cookies Secure.
    uvicorn.run(app, host=host, port=port, proxy_headers=True, server_header=False, log_level="info")
