"""`upkeep portal serve|link`: the customer portal (upkeep/portal) for designated users."""

from __future__ import annotations

from typing import Annotated

import typer

from upkeep.cli_common import JsonOpt
from upkeep.console import CliError, console, print_json

portal_app = typer.Typer(help="The customer portal: designated users confirm and defer maintenance.")


def register(app: typer.Typer) -> None:
    app.add_typer(portal_app, name="portal")


@portal_app.command("serve")
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=1, max=65535)] = 8600,
) -> None:
    """Serve the portal with uvicorn until interrupted. Links in emails use UPKEEP_PORTAL_URL."""
    from upkeep.portal.server import serve as run
    from upkeep.settings import load_settings

    run(load_settings(), host=host, port=port)


@portal_app.command("link")
def link(
    email: Annotated[str, typer.Argument(help="A designated user's address (see portal_users:).")],
    json: JsonOpt = False,
) -> None:
    """Print a sign-in link for a designated user (single use, expires like an emailed one)."""
    from datetime import timedelta

    from inventory.db import session_scope
    from upkeep.cli_common import open_engine
    from upkeep.portal.signin import sign_in_link
    from upkeep.settings import load_settings

    settings = load_settings()
    ttl = timedelta(minutes=settings.portal_link_minutes)
    with session_scope(open_engine()) as session:
        url = sign_in_link(
            settings.portal_url, settings.resolved_portal_secret(), ttl, email, session=session
        )
    if url is None:
        raise CliError(
            f"{email[:254]!r} is not a portal user of any customer (see portal_users: in the inventory)"
        )
    if json:
        print_json({"email": email, "url": url, "expires_in_minutes": settings.portal_link_minutes})
        return
    console.print(url, markup=False, soft_wrap=True)
