"""This installation's identity: generated once, stored in the database, put into every invite UID and
Message-ID so two installations (or a rebuilt database) never produce the same ones for different
customers, which a calendar or mail client would take for one event or one message."""

from __future__ import annotations

import secrets

from sqlmodel import Session, col, select

from inventory.models import Installation


def installation_id(session: Session) -> str:
    """The installation id, created on first use. Should two processes create one at the very same
    first moment, the oldest row wins for everyone from then on."""
    query = select(Installation.installation_id).order_by(col(Installation.id)).limit(1)
    found = session.exec(query).first()
    if found is not None:
        return found
    session.add(Installation(installation_id=secrets.token_hex(6)))
    session.flush()
    created = session.exec(query).first()
    assert created is not None
    return created
