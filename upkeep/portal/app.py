"""The portal's routes (Starlette): sign-in, maintenance (see, defer, confirm) and cases.

Every page but the sign-in ones needs a live session, and every query is scoped to the session's
customer: an id of another customer's update or cluster is a 404, exactly like an id that does not
exist. Every POST carries a CSRF token (the session's, or before sign-in the `upkeep_csrf` cookie's),
is refused from another Origin, and is parsed strictly (`security.read_form`); a refusal writes nothing
(the work runs in one transaction that the refusal rolls back). Redirects go to fixed paths only.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parseaddr
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from flows import portal_actions as actions
from flows.portal_links import LinkProblem, PortalLinks, mailbox_tag
from flows.schedule import ScheduleRefused, parse_update_ref
from inventory import portal_access, repo
from inventory.cases import CaseError
from inventory.db import session_scope
from inventory.models import Customer
from inventory.portal_access import SignedIn
from inventory.portal_tables import PortalUser
from scheduling.errors import SchedulingError
from scheduling.sla import Category, Priority
from tasks.mail import OutgoingMessage, build_message, message_id_for
from templates import RenderedNotice, format_slot
from upkeep.portal.config import PortalConfig
from upkeep.portal.package_cache import CacheRefused, open_package
from upkeep.portal.security import (
    BadForm,
    ClientLimiter,
    SecurityHeaders,
    foreign_origin,
    read_form,
    same_token,
)
from upkeep.portal.signin import LinkRefused, LinkSigner, digest, new_session

SESSION_COOKIE = "upkeep_session"
CSRF_COOKIE = "upkeep_csrf"
NEXT_COOKIE = "upkeep_next"  # the update page a notice linked to, shown once signed in
DEEP_LINK = re.compile(r"/maintenance/update-[0-9]{1,18}")
TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "portal"
DONE = {
    "deferred": "The update was deferred; everyone designated has been told.",
    "confirmed": "Thank you: your confirmation was recorded and sent to everyone designated.",
    "opened": "The case was opened; our support team has it.",
    "commented": "Your comment was added to the case.",
    "revoked": "The calendar feed was revoked; its address no longer works.",
    "escalated": "The escalation was requested; a manager on our side has been alerted.",
}
LINK_REFUSALS = {
    "expired": ("This sign-in link has expired", "Links work for a short time only. Ask for a new one."),
    "used": ("This sign-in link was used already", "Each link works once. Ask for a new one."),
    "invalid": (
        "This sign-in link is not valid",
        "It may have been cut short or changed. Ask for a new one.",
    ),
    "unknown": ("This sign-in link is not valid", "It is not one we sent. Ask for a new one."),
    "removed": ("This sign-in link no longer works", "The address it was sent to no longer has access."),
    "other-customer": (
        "This sign-in link no longer works",
        "It was sent for another organisation than the one this address now belongs to.",
    ),
}
NOTICE_LINK_REFUSALS = {
    "expired": (
        "This link has expired",
        "Links in our emails work until a week after the maintenance they announce. "
        "Your upcoming maintenance is listed in the portal.",
    ),
    "invalid": (
        "This link is not valid",
        "It may have been cut short or changed. Your upcoming maintenance is listed in the portal.",
    ),
}
T = TypeVar("T")
log = logging.getLogger(__name__)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["urlquote"] = lambda value: quote(str(value), safe="")
    return env


class OpenFileResponse(FileResponse):
    """FileResponse of a file already open (`fd`, closed when the answer ends, however it ends): read
    through /proc/self/fd, which reaches the open file even once its name was removed (a package cache
    eviction between the open and the answer, adv53)."""

    def __init__(self, fd: int, **kwargs: Any) -> None:
        super().__init__(f"/proc/self/fd/{fd}", **kwargs)
        self.fd = fd

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)


class Portal:
    def __init__(self, config: PortalConfig) -> None:
        self.config = config
        self.env = _environment()
        self.links = LinkSigner(config.secret, config.now, config.link_ttl)
        self.portal_links = PortalLinks(config.base_url, config.secret)  # notices' and welcome links
        self.clients = ClientLimiter(config.requests_per_client, config.client_window, config.now)

    # -- plumbing ---------------------------------------------------------------------------------

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("user", None)
        context.setdefault("csrf", "")
        context.setdefault("notice", "")
        html = self.env.get_template(name).render(root=request.scope.get("root_path", ""), **context)
        return HTMLResponse(html, status_code=status)

    def message(self, request: Request, status: int, title: str, text: str, **context: Any) -> HTMLResponse:
        return self.page(request, "message.html.j2", status, title=title, text=text, **context)

    def redirect(self, request: Request, path: str) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + path, status_code=303)

    def secure(self, request: Request) -> bool:
        return self.config.secure_cookies or request.url.scheme == "https"

    def set_cookie(self, request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            samesite="lax",
            secure=self.secure(request),
            path=request.scope.get("root_path", "") or "/",
        )

    def pre_csrf(self, request: Request, response_factory: Callable[[str], Response]) -> Response:
        """A page with a form shown before sign-in: its token is the `upkeep_csrf` cookie's."""
        token = request.cookies.get(CSRF_COOKIE, "")
        fresh = not (20 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum())
        token = secrets.token_urlsafe(32) if fresh else token
        response = response_factory(token)
        if fresh:
            self.set_cookie(request, response, CSRF_COOKIE, token, max_age=24 * 3600)
        return response

    async def db(self, work: Callable[..., T], *args: Any) -> T:
        """`work(session, *args)` in one transaction, off the event loop."""

        def run() -> T:
            with session_scope(self.config.engine) as session:
                return work(session, *args)

        return await run_in_threadpool(run)

    def signed_in(self, request: Request, session: Any) -> SignedIn | None:
        token = request.cookies.get(SESSION_COOKIE, "")
        if not 20 <= len(token) <= 100:
            return None
        return portal_access.signed_in(digest(token), now=self.config.now(), session=session)

    async def user_or_none(self, request: Request) -> SignedIn | None:
        return await self.db(lambda session: self.signed_in(request, session))

    async def posted(
        self, request: Request, expected: Callable[[dict[str, str]], str | None]
    ) -> dict[str, str]:
        """The POSTed form if its CSRF token is `expected(form)` and it comes from this site."""
        if foreign_origin(request, self.config.base_url):
            raise HTTPException(403, "This form was sent from another site.")
        try:
            form = await read_form(request)
        except BadForm as exc:
            raise HTTPException(400, str(exc)) from None
        if not same_token(form.get("csrf"), expected(form)):
            raise HTTPException(
                403, "This form has expired or was not sent from the portal. Reload the page."
            )
        return form

    # -- sign-in ----------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        user = await self.user_or_none(request)
        return self.redirect(request, "/maintenance" if user else "/signin")

    def signin_page(self, request: Request, *, email: str = "", welcome: bool = False) -> Response:
        minutes = int(self.config.link_ttl.total_seconds() // 60)
        waiting = not welcome and DEEP_LINK.fullmatch(request.cookies.get(NEXT_COOKIE, "")) is not None
        context: dict[str, Any] = {"minutes": minutes, "email": email, "welcome": welcome, "waiting": waiting}
        return self.pre_csrf(
            request, lambda token: self.page(request, "signin.html.j2", csrf=token, **context)
        )

    async def signin_form(self, request: Request) -> Response:
        return self.signin_page(request)

    async def signin_welcome(self, request: Request) -> Response:
        """The link in the welcome email: the sign-in page for the address on file, or a clear refusal
        when the link is not ours or its user was removed (the link itself signs nobody in)."""
        try:
            user_id, customer_id, tag = self.portal_links.read_welcome(request.query_params.get("t", ""))
        except LinkProblem:
            return self.refused_link(request, "invalid")

        def find(session: Any) -> str | None:
            user = session.get(PortalUser, user_id)
            if user is None or user.customer_id != customer_id or mailbox_tag(user.mailbox) != tag:
                return None  # removed (its id may have gone to someone else since)
            return user.email

        email = await self.db(find)
        if email is None:
            return self.refused_link(request, "removed")
        return self.signin_page(request, email=email, welcome=True)

    async def signin_request(self, request: Request) -> Response:
        form = await self.posted(request, lambda _: request.cookies.get(CSRF_COOKIE))
        client = request.client.host if request.client else "unknown"
        if not self.clients.allow(client):
            return self.message(
                request, 429, "Too many sign-in requests", "Please wait a few minutes and try again."
            )
        email = form.get("email", "").strip()
        message = await self.db(self._issue_link, email)
        minutes = int(self.config.link_ttl.total_seconds() // 60)
        response = self.page(request, "signin_sent.html.j2", minutes=minutes)
        if message is not None:
            response.background = BackgroundTask(self._send, message)
        return response  # the same page whether or not the address is a designated user's

    def _issue_link(self, session: Any, email: str) -> OutgoingMessage | None:
        now = self.config.now()
        user = portal_access.find_user(email, session=session)
        if user is None or user.id is None:
            return None
        recent = portal_access.links_issued_since(user.id, now - self.config.link_ttl, session=session)
        if recent >= self.config.links_per_address:
            repo.record_audit(
                user.email, "portal.link_throttled", f"portal_user/{user.id}", {}, session=session
            )
            return None
        token = self.links.issue(user, session=session)
        customer = session.get(Customer, user.customer_id)
        link = f"{self.config.base_url}/signin/link?t={token}"
        minutes = int(self.config.link_ttl.total_seconds() // 60)
        variables = {
            "link": link,
            "minutes": minutes,
            "customer": customer.name if customer else "",
            "user": user,
        }
        rendered = RenderedNotice(
            subject="Your sign-in link for the maintenance portal",
            text=self.env.get_template("signin_email.txt.j2").render(variables),
            html=self.env.get_template("signin_email.html.j2").render(variables),
        )
        key = f"portal-signin:{user.id}:{secrets.token_hex(8)}"
        domain = parseaddr(self.config.mail_from)[1].rpartition("@")[2] or "upkeep"
        repo.record_audit(user.email, "portal.link_sent", f"portal_user/{user.id}", {}, session=session)
        return build_message(
            rendered,
            None,
            sender=self.config.mail_from,
            recipients=[user.email],
            message_id=message_id_for(key, domain),
            idempotency_key=key,
            date=now,
        )

    def _send(self, message: OutgoingMessage) -> None:
        try:
            self.config.mailer.send(message)
        except Exception as exc:  # the page is out; the user asks again. Never log the link itself.
            log.warning(
                "portal: sending a sign-in link to %s failed: %s", message.recipients, type(exc).__name__
            )

    async def signin_link(self, request: Request) -> Response:
        token = request.query_params.get("t", "")
        try:
            user = await self.db(lambda session: self.links.check(token, session=session))
        except LinkRefused as exc:
            return self.refused_link(request, exc.reason)
        email = user.email
        return self.pre_csrf(
            request,
            lambda csrf: self.page(request, "signin_link.html.j2", csrf=csrf, token=token, email=email),
        )

    def refused_link(self, request: Request, reason: str) -> Response:
        title, text = LINK_REFUSALS.get(reason, LINK_REFUSALS["invalid"])
        return self.message(request, 400, title, text, again=True)

    async def signin_redeem(self, request: Request) -> Response:
        form = await self.posted(request, lambda _: request.cookies.get(CSRF_COOKIE))

        def redeem(session: Any) -> str:
            user = self.links.redeem(form.get("t", ""), session=session)
            repo.record_audit(user.email, "portal.signed_in", f"portal_user/{user.id}", {}, session=session)
            return new_session(user, now=self.config.now(), ttl=self.config.session_ttl, session=session)

        try:
            cookie = await self.db(redeem)
        except LinkRefused as exc:
            return self.refused_link(request, exc.reason)
        target = request.cookies.get(NEXT_COOKIE, "")
        response = self.redirect(request, target if DEEP_LINK.fullmatch(target) else "/maintenance")
        self.set_cookie(
            request, response, SESSION_COOKIE, cookie, max_age=int(self.config.session_ttl.total_seconds())
        )
        response.delete_cookie(NEXT_COOKIE, path=request.scope.get("root_path", "") or "/")
        response.delete_cookie(CSRF_COOKIE, path=request.scope.get("root_path", "") or "/")
        return response

    async def signout(self, request: Request) -> Response:
        user = await self.user_or_none(request)
        if user is not None:
            await self.posted(request, lambda _: user.csrf)
            token = request.cookies.get(SESSION_COOKIE, "")

            def end(session: Any) -> None:
                portal_access.end_session(digest(token), session=session)
                repo.record_audit(
                    user.email, "portal.signed_out", f"portal_user/{user.user_id}", {}, session=session
                )

            await self.db(end)
        response = self.message(request, 200, "Signed out", "You have signed out of the portal.", again=True)
        response.delete_cookie(SESSION_COOKIE, path=request.scope.get("root_path", "") or "/")
        return response

    # -- signed-in pages --------------------------------------------------------------------------

    async def signed_in_page(
        self, request: Request, render: Callable[[Any, SignedIn, Customer], Response]
    ) -> Response:
        def work(session: Any) -> Response:
            user = self.signed_in(request, session)
            if user is None:
                response = self.redirect(request, "/signin")
                if DEEP_LINK.fullmatch(request.url.path):  # a notice's link: go there once signed in
                    self.set_cookie(request, response, NEXT_COOKIE, request.url.path, max_age=3600)
                return response
            customer = session.get(Customer, user.customer_id)
            assert customer is not None
            return render(session, user, customer)

        return await self.db(work)

    async def signed_in_action(
        self,
        request: Request,
        act: Callable[[Any, SignedIn, Customer, dict[str, str]], Response],
    ) -> Response:
        user = await self.user_or_none(request)
        if user is None:
            raise HTTPException(403, "Your session has ended. Sign in again.")
        form = await self.posted(request, lambda _: user.csrf)

        def work(session: Any) -> Response:
            again = self.signed_in(request, session)  # removed or signed out meanwhile: nothing done
            if again is None or again.user_id != user.user_id:
                raise HTTPException(403, "Your session has ended. Sign in again.")
            customer = session.get(Customer, again.customer_id)
            assert customer is not None
            return act(session, again, customer, form)

        return await self.db(work)

    def notice(self, request: Request) -> str:
        return DONE.get(request.query_params.get("done", ""), "")

    async def maintenance(self, request: Request) -> Response:
        def render(session: Any, user: SignedIn, customer: Customer) -> Response:
            updates = actions.upcoming_updates(customer, session=session)
            stopped = actions.stopped_updates(customer, session=session)
            return self.page(
                request,
                "maintenance.html.j2",
                user=user,
                csrf=user.csrf,
                updates=updates,
                in_progress=actions.in_progress_updates(
                    customer, session=session, stopped=stopped, upcoming=updates
                ),
                stopped=stopped,
                feed=actions.has_feed(customer, session=session),
                notice=self.notice(request),
            )

        return await self.signed_in_page(request, render)

    async def history(self, request: Request) -> Response:
        def render(session: Any, user: SignedIn, customer: Customer) -> Response:
            updates = actions.past_updates(customer, session=session)
            return self.page(request, "history.html.j2", user=user, csrf=user.csrf, updates=updates)

        return await self.signed_in_page(request, render)

    def run_id(self, request: Request) -> int:
        try:
            return parse_update_ref(str(request.path_params["ref"]))
        except ScheduleRefused:
            raise HTTPException(404, "There is no such update.") from None

    async def update(self, request: Request) -> Response:
        run_id = self.run_id(request)
        token, linked_to = request.query_params.get("k"), None
        if token is not None:  # a notice's signed link (flows/portal_links.py)
            try:
                linked_to = self.portal_links.read_update(token, run_id=run_id, now=self.config.now())
            except LinkProblem as exc:
                title, text = NOTICE_LINK_REFUSALS[exc.reason]
                user = await self.user_or_none(request)
                return self.message(request, 400, title, text, user=user, again=user is None)

        def render(session: Any, user: SignedIn, customer: Customer) -> Response:
            if linked_to is not None and linked_to != customer.id:  # another customer's notice
                raise HTTPException(404, "There is no such upcoming update.")
            try:
                run = actions.customer_update(run_id, customer, session=session)
            except actions.NotYours:  # not upcoming: the update as it is now, not a 404
                return self.update_as_it_is(request, session, user, customer, run_id)
            view = actions.update_view(run_id, customer, session=session)
            choices = actions.defer_choices(run, now=self.config.now(), session=session)
            options = [
                (slot.start.isoformat(), format_slot(slot.start, customer.timezone)) for slot in choices
            ]
            return self.page(
                request,
                "update.html.j2",
                user=user,
                csrf=user.csrf,
                update=view,
                options=options,
                confirmed=actions.has_confirmed(user.email, view.confirmed_by),
                notice=self.notice(request),
                error="",
            )

        return await self.signed_in_page(request, render)

    def update_as_it_is(
        self, request: Request, session: Any, user: SignedIn, customer: Customer, run_id: int
    ) -> Response:
        """The page of the customer's update that is no longer upcoming, for any of its notices' links
        (scheduled, started, stopped): stopped for now, in progress, or ended (its History entry). An
        update not announced, or not this customer's, is the 404 of one that does not exist."""
        try:
            stopped = actions.stopped_update(run_id, customer, session=session)
            return self.page(request, "stopped.html.j2", user=user, csrf=user.csrf, s=stopped)
        except actions.NotYours:
            pass
        try:
            going = actions.in_progress_update(run_id, customer, session=session)
            return self.page(request, "in_progress.html.j2", user=user, csrf=user.csrf, p=going)
        except actions.NotYours:
            pass
        try:
            ended = actions.past_update(run_id, customer, session=session)
        except actions.NotYours:
            raise HTTPException(404, "There is no such upcoming update.") from None
        return self.page(request, "ended.html.j2", user=user, csrf=user.csrf, u=ended)

    async def defer(self, request: Request) -> Response:
        run_id = self.run_id(request)

        def act(session: Any, user: SignedIn, customer: Customer, form: dict[str, str]) -> Response:
            start = _instant(form.get("start", ""))
            try:
                run = actions.defer_to(
                    run_id,
                    customer,
                    start,
                    now=self.config.now(),
                    actor=user.email,
                    session=session,
                    vendor=self.config.vendor,
                )
            except actions.NotYours:
                raise HTTPException(404, "There is no such upcoming update.") from None
            except SchedulingError as exc:
                raise HTTPException(409, str(exc)) from None
            return self.redirect(request, f"/maintenance/update-{run.id}?done=deferred")

        return await self.signed_in_action(request, act)

    async def confirm(self, request: Request) -> Response:
        run_id = self.run_id(request)

        def act(session: Any, user: SignedIn, customer: Customer, form: dict[str, str]) -> Response:
            try:
                run = actions.confirm(
                    run_id, customer, now=self.config.now(), actor=user.email, session=session,
                    vendor=self.config.vendor,
                )  # fmt: skip
            except actions.NotYours:
                raise HTTPException(404, "There is no such upcoming update.") from None
            except SchedulingError as exc:  # started or moved by another process just now
                raise HTTPException(409, str(exc)) from None
            return self.redirect(request, f"/maintenance/update-{run.id}?done=confirmed")

        return await self.signed_in_action(request, act)

    def cases_page(
        self, request: Request, session: Any, user: SignedIn, customer: Customer, *, status: int = 200,
        error: str = "", form: dict[str, str] | None = None,
    ) -> Response:  # fmt: skip
        return self.page(
            request,
            "cases.html.j2",
            status,
            user=user,
            csrf=user.csrf,
            cases=actions.cases_of(customer, session=session),
            clusters=[c.name for c in actions.customer_clusters(customer, session=session)],
            priorities=[(p.value, f"{p.value} / severity {int(p.value[1]) + 1}") for p in Priority],
            categories=[(c.value, c.value.replace("_", " ").capitalize()) for c in Category],
            notice=self.notice(request),
            error=error,
            form=form or {},
            zone=customer.timezone,
            fmt=format_slot,
        )

    async def cases(self, request: Request) -> Response:
        return await self.signed_in_page(request, partial(self.cases_page, request))

    async def open_case(self, request: Request) -> Response:
        def act(session: Any, user: SignedIn, customer: Customer, form: dict[str, str]) -> Response:
            try:
                with session.begin_nested():  # a refusal leaves nothing behind
                    actions.open_customer_case(
                        customer,
                        cluster=form.get("cluster", ""),
                        subject=form.get("subject", ""),
                        description=form.get("description", ""),
                        category=form.get("category", ""),
                        priority=form.get("priority", ""),
                        now=self.config.now(),
                        actor=user.email,
                        session=session,
                        vendor=self.config.vendor,
                    )
            except actions.NotYours:
                raise HTTPException(404, "There is no such cluster.") from None
            except (CaseError, SchedulingError) as exc:
                return self.cases_page(
                    request, session, user, customer, status=400, error=str(exc), form=form
                )
            return self.redirect(request, "/cases?done=opened")

        return await self.signed_in_action(request, act)

    def case_page(
        self, request: Request, session: Any, user: SignedIn, customer: Customer, ref: str, *,
        status: int = 200, error: str = "",
    ) -> Response:  # fmt: skip
        try:
            case = actions.customer_case(ref, customer, session=session)
        except actions.NotYours:
            raise HTTPException(404, "There is no such case.") from None
        return self.page(
            request, "case.html.j2", status, user=user, csrf=user.csrf, case=case,
            thread=actions.case_thread(case, session=session), zone=customer.timezone, fmt=format_slot,
            notice=self.notice(request), error=error,
        )  # fmt: skip

    async def case(self, request: Request) -> Response:
        ref = str(request.path_params["ref"])
        return await self.signed_in_page(request, lambda s, u, c: self.case_page(request, s, u, c, ref))

    async def case_action(self, request: Request) -> Response:
        ref, what = str(request.path_params["ref"]), str(request.path_params["what"])
        if what not in ("comment", "escalate"):
            raise HTTPException(404, "There is no such page.")

        def act(session: Any, user: SignedIn, customer: Customer, form: dict[str, str]) -> Response:
            try:
                case = actions.customer_case(ref, customer, session=session)
            except actions.NotYours:
                raise HTTPException(404, "There is no such case.") from None
            try:
                with session.begin_nested():
                    if what == "comment":
                        actions.comment_on_case(case, form.get("text", ""), actor=user.email, session=session)
                    else:
                        actions.request_escalation(
                            case,
                            form.get("reason", ""),
                            now=self.config.now(),
                            actor=user.email,
                            session=session,
                        )
            except (CaseError, SchedulingError) as exc:
                session.refresh(case)
                status = 409 if isinstance(exc, actions.AlreadyEscalated) else 400
                return self.case_page(request, session, user, customer, ref, status=status, error=str(exc))
            done = "commented" if what == "comment" else "escalated"
            return self.redirect(request, f"/cases/{case.ref}?done={done}")

        return await self.signed_in_action(request, act)

    async def feed_create(self, request: Request) -> Response:
        def act(session: Any, user: SignedIn, customer: Customer, form: dict[str, str]) -> Response:
            token = secrets.token_urlsafe(32)
            actions.new_feed(
                customer, digest(token), now=self.config.now(), actor=user.email, session=session
            )
            url = f"{self.config.base_url}/feed/{token}.ics"
            return self.page(request, "feed.html.j2", user=user, csrf=user.csrf, url=url)

        return await self.signed_in_action(request, act)

    async def feed_revoke(self, request: Request) -> Response:
        def act(session: Any, user: SignedIn, customer: Customer, form: dict[str, str]) -> Response:
            actions.revoke_feed(customer, actor=user.email, session=session)
            return self.redirect(request, "/maintenance?done=revoked")

        return await self.signed_in_action(request, act)

    async def feed(self, request: Request) -> Response:
        token = str(request.path_params["token"])
        if not 20 <= len(token) <= 100:
            raise HTTPException(404, "There is no such calendar feed.")
        now, url = self.config.now(), self.config.base_url
        ics = await self.db(
            lambda session: actions.feed_ics(
                digest(token), now=now, portal_url=url, session=session, links=self.portal_links
            )
        )
        if ics is None:
            raise HTTPException(404, "There is no such calendar feed (it may have been replaced or revoked).")
        return Response(ics, media_type="text/calendar; charset=utf-8")

    async def downloads(self, request: Request) -> Response:
        def render(session: Any, user: SignedIn, customer: Customer) -> Response:
            found = actions.downloads(customer, session=session)
            return self.page(request, "downloads.html.j2", user=user, csrf=user.csrf, downloads=found)

        return await self.signed_in_page(request, render)

    async def download(self, request: Request) -> Response:
        """The package, fetched from the file server with Upkeep's credentials and verified against its
        SHA-256 once (kept: upkeep/portal/package_cache.py), then served to the user from disk, HEAD and
        Range included: the file server's address and password never reach them."""
        version = str(request.path_params["version"])

        def find(session: Any) -> actions.Download | None:
            user = self.signed_in(request, session)
            customer = session.get(Customer, user.customer_id) if user is not None else None
            if customer is None:
                return None
            try:
                return actions.customer_download(version, customer, session=session)
            except actions.NotYours:
                raise HTTPException(404, "There is no such release for you.") from None

        found = await self.db(find)
        if found is None:
            return self.redirect(request, "/signin")
        package, filename, sha256 = found.package, found.filename, found.sha256
        if self.config.fileserver is None:
            raise HTTPException(503, "Downloads are not available here.")
        try:
            fd = await run_in_threadpool(
                open_package, self.package_cache(), self.config.fileserver, package, sha256
            )
        except CacheRefused as exc:  # the cache's own words (its directory, the catalog): no secrets
            log.warning("portal: download of %s failed: %s", package, exc)
            raise HTTPException(
                503, "The download is not available right now. Please try again later."
            ) from None
        except Exception as exc:
            log.warning("portal: download of %s failed: %s", package, type(exc).__name__)
            raise HTTPException(
                503, "The download is not available right now. Please try again later."
            ) from None
        return OpenFileResponse(
            fd,
            filename=filename,
            media_type="application/octet-stream",
            # The package's SHA-256 is its strong validator: the same bytes whichever copy the cache
            # holds, so a cut download resumes with If-Range even after the copy was fetched again.
            headers={"x-checksum-sha256": sha256, "etag": f'"{sha256}"'},
        )

    def package_cache(self) -> Path:
        """Where verified packages are kept (upkeep/portal/package_cache.py): the configured directory,
        else one of this process's own."""
        if self.config.package_cache is None:
            self.config.package_cache = Path(tempfile.mkdtemp(prefix="upkeep-portal-packages-"))
        return self.config.package_cache

    async def css(self, request: Request) -> Response:
        return FileResponse(TEMPLATES / "portal.css", media_type="text/css")

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {400: "That request was not understood", 403: "Not allowed", 404: "Not found",
                  405: "Not allowed", 409: "That could not be done", 429: "Too many requests"}  # fmt: skip
        title = titles.get(exc.status_code, "That could not be done")
        detail = exc.detail if exc.status_code != 405 else "That address does not take this kind of request."
        return self.message(request, exc.status_code, title, str(detail))

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.error("portal: %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return self.message(
            request, 500, "Something went wrong", "Nothing was changed. Please try again later."
        )


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, "Choose one of the times offered.") from None
    if moment.tzinfo is None:
        raise HTTPException(400, "Choose one of the times offered.")
    try:  # year 9999 behind UTC or year 1 ahead of it has no UTC time: OverflowError, not a 500
        return moment.astimezone(UTC)
    except OverflowError:
        raise HTTPException(400, "Choose one of the times offered.") from None


def create_app(config: PortalConfig) -> Starlette:
    portal = Portal(config)
    routes = [
        Route("/", portal.home),
        Route("/signin", portal.signin_form, methods=["GET"]),
        Route("/signin", portal.signin_request, methods=["POST"]),
        Route("/signin/link", portal.signin_link, methods=["GET"]),
        Route("/signin/welcome", portal.signin_welcome, methods=["GET"]),
        Route("/signin/link", portal.signin_redeem, methods=["POST"]),
        Route("/signout", portal.signout, methods=["POST"]),
        Route("/maintenance", portal.maintenance, methods=["GET"]),
        Route("/maintenance/{ref}", portal.update, methods=["GET"]),
        Route("/maintenance/{ref}/defer", portal.defer, methods=["POST"]),
        Route("/maintenance/{ref}/confirm", portal.confirm, methods=["POST"]),
        Route("/history", portal.history, methods=["GET"]),
        Route("/downloads", portal.downloads, methods=["GET"]),
        Route("/downloads/{version}", portal.download, methods=["GET"]),
        Route("/maintenance-feed", portal.feed_create, methods=["POST"]),
        Route("/maintenance-feed/revoke", portal.feed_revoke, methods=["POST"]),
        Route("/feed/{token}.ics", portal.feed, methods=["GET"]),
        Route("/cases", portal.cases, methods=["GET"]),
        Route("/cases", portal.open_case, methods=["POST"]),
        Route("/cases/{ref}", portal.case, methods=["GET"]),
        Route("/cases/{ref}/{what}", portal.case_action, methods=["POST"]),
        Route("/static/portal.css", portal.css, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: portal.http_error, Exception: portal.server_error},
    )
    # No trailing-slash redirect: Starlette builds its Location from the request's Host header (a Host
    # of evil.example sent the browser there, a 307 carrying a POST's form); /cases/ is simply a 404.
    app.router.redirect_slashes = False
    app.add_middleware(SecurityHeaders)
    app.state.portal = portal
    return app
