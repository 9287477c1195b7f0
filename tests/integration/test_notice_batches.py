"""One SMTP connection per delivery call, against a real SMTP server (aiosmtpd on 127.0.0.1).

What the shared connection must not change: each notice reaches the server once, a refusal concerns
only its own message, and a connection the server dropped between two messages is reopened without
losing or doubling one. Connections are counted on the server side (the client's port per message).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from flows.notify import deliver_pending
from inventory.db import session_scope
from inventory.outbox import NoticeState
from tasks.mail import IDEMPOTENCY_HEADER
from tests.integration.test_notices import T0, Recorder, SmtpServer, deliver, notices, queue

pytestmark = pytest.mark.smtp


class Counting(Recorder):
    """Also notes which connection (client port) each DATA came on, answers DATA per notice
    (`answers`, by idempotency key), and can end the connection when the client sends RSET."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[int] = []
        self.connections = 0
        self.answers: dict[str, str] = {}
        self.on_rset: list[str] = []  # one action per RSET: "abort" (drop the TCP connection) or a reply

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        key = next(
            (
                line.split(":", 1)[1].strip()
                for line in envelope.content.decode().splitlines()
                if line.startswith(f"{IDEMPOTENCY_HEADER}:")
            ),
            "",
        )
        self.ports.append(session.peer[1])
        answer = self.answers.get(key, "250 OK")
        if answer.startswith("250"):
            return await super().handle_DATA(server, session, envelope)
        return answer

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        action = self.on_rset.pop(0) if self.on_rset else "250 OK"
        if action == "abort":
            server.transport.abort()  # gone before it can answer: the client reads EOF or a reset
        return "250 OK" if action == "abort" else action


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.handler = Counting()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def handler(smtp: SmtpServer) -> Counting:
    assert isinstance(smtp.handler, Counting)
    return smtp.handler


def test_one_connection_carries_every_message_of_a_call(engine: Engine, customer_id: int, smtp: SmtpServer):
    with session_scope(engine) as session:
        queue(session, customer_id, 6)
    assert deliver(engine, smtp.transport(), T0 - timedelta(seconds=1)).sent == []  # nothing due yet
    assert handler(smtp).connections == 0  # and so no connection either

    report = deliver(engine, smtp.transport(), T0)

    assert len(report.sent) == 6 and not report.retrying and not report.transport_error
    assert handler(smtp).connections == 1 and len(set(handler(smtp).ports)) == 1
    assert set(smtp.handler.ids().values()) == {1} and len(smtp.handler.ids()) == 6
    assert {row.state for row in notices(engine)} == {NoticeState.sent}


@pytest.mark.parametrize("drop", ["abort", "421 4.4.2 idle too long, closing"])
def test_a_connection_dropped_between_messages_is_reopened_and_nothing_is_lost_or_doubled(
    engine: Engine, customer_id: int, smtp: SmtpServer, drop: str
):
    with session_scope(engine) as session:
        queue(session, customer_id, 3)
    handler(smtp).on_rset.append(drop)  # the RSET before the second message finds the connection gone

    report = deliver(engine, smtp.transport(), T0)

    assert len(report.sent) == 3 and not report.retrying and not report.transport_error
    assert handler(smtp).connections == 2
    first, second, third = handler(smtp).ports
    assert first != second == third  # message 1 on the first connection, 2 and 3 on the reopened one
    keys = [row.idempotency_key for row in notices(engine)]
    assert Counter(m[IDEMPOTENCY_HEADER] for m in smtp.handler.messages) == Counter(keys)
    assert [(row.state, row.attempts) for row in notices(engine)] == [(NoticeState.sent, 1)] * 3


@pytest.mark.parametrize(
    ("answer", "state"),
    [("451 4.3.0 try later", NoticeState.pending), ("554 5.6.0 refused", NoticeState.failed)],
)
def test_a_refusal_of_message_2_of_3_concerns_only_it(
    engine: Engine, customer_id: int, smtp: SmtpServer, answer: str, state: NoticeState
):
    with session_scope(engine) as session:
        queue(session, customer_id, 3)
    handler(smtp).answers["update-2:scheduled:2"] = answer

    report = deliver(engine, smtp.transport(), T0)

    assert sorted(report.sent) == ["update-1:scheduled:2", "update-3:scheduled:2"]
    assert not report.transport_error
    if state is NoticeState.pending:
        assert report.retrying == ["update-2:scheduled:2"] and report.failed == []
    else:
        assert [failure.key for failure in report.failed] == ["update-2:scheduled:2"]
        assert answer in report.failed[0].error and report.retrying == []
    assert handler(smtp).connections == 1 and len(set(handler(smtp).ports)) == 1
    rows = {row.idempotency_key: row for row in notices(engine)}
    assert rows["update-2:scheduled:2"].state == state and rows["update-2:scheduled:2"].attempts == 1
    assert {rows[key].state for key in ("update-1:scheduled:2", "update-3:scheduled:2")} == {NoticeState.sent}
    if state is NoticeState.pending:
        assert rows["update-2:scheduled:2"].next_attempt_at == T0 + timedelta(seconds=30)
        handler(smtp).answers.clear()
        later = deliver(engine, smtp.transport(), T0 + timedelta(seconds=30))
        assert later.sent == ["update-2:scheduled:2"]
    assert set(smtp.handler.ids().values()) == {1}


def test_a_sender_that_is_not_an_address_is_refused_before_any_notice_is_touched(
    engine: Engine, customer_id: int, smtp: SmtpServer
):
    with session_scope(engine) as session:
        queue(session, customer_id, 2)
    with pytest.raises(ValueError, match=re.escape(repr("Upkeep ops team"))):
        deliver_pending(engine, smtp.transport(), now=T0, sender="Upkeep ops team")
    assert [(row.state, row.attempts) for row in notices(engine)] == [(NoticeState.pending, 0)] * 2
    assert handler(smtp).connections == 0
