"""SRE alerts: their own template, written for the engineer who has to act (not the customer's notice).

Subject and plain text go to every Apprise channel (chat, pager, webhook); the HTML version to the SRE
mailbox. Every field is shown only when known, so one template serves a failed run, a vendor-side
failure before any node, a held update and an on-call page.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from templates import environment

__all__ = ["AlertContext", "RenderedAlert", "render_alert"]


@dataclass(frozen=True, kw_only=True)
class AlertContext:
    headline: str  # one line: what happened, e.g. "run 12 failed at download, no node touched"
    cause: str  # the one-line cause, naming what was tried (URL, setting, path)
    at: datetime
    customer: str = ""
    cluster: str = ""
    run_id: int | None = None
    from_version: str = ""
    to_version: str = ""
    node: str = ""
    step: str = ""
    detail: str = ""  # more lines under the cause (diagnostics trouble, what the customer was told)
    flow_run_url: str = ""
    case_ref: str = ""
    bundle_url: str = ""
    action: str = ""  # what the SRE can do next
    paged: tuple[str, ...] = field(default_factory=tuple)  # on-call pages: who this one is addressed to
    ack_command: str = ""


@dataclass(frozen=True)
class RenderedAlert:
    subject: str
    text: str
    html: str


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def render_alert(ctx: AlertContext) -> RenderedAlert:
    if ctx.at.tzinfo is None:
        raise ValueError(f"alert time {ctx.at!r} is naive")
    variables = asdict(ctx) | {
        "at_utc": ctx.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "where": "/".join(part for part in (ctx.customer, ctx.cluster) if part),  # no "acme/" alone
        "inspect": f"upkeep show {ctx.run_id}" if ctx.run_id is not None else "",
    }
    where = variables["where"]
    # Every line break a mail header or a chat title could split on (CR, LF, VT, FF, NEL, U+2028/9...)
    # and every other control character becomes a space: one line, nothing injected, always buildable.
    subject = _CONTROL.sub(" ", f"[Upkeep] {where + ': ' if where else ''}{ctx.headline}")[:900]
    env = environment()
    return RenderedAlert(
        subject=subject,
        text=env.get_template("sre_alert.txt.j2").render(variables),
        html=env.get_template("sre_alert.html.j2").render(variables),
    )
