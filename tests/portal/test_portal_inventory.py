"""Designated portal users in the database, on SQLite and PostgreSQL: imported with the inventory,
removed with it (and their sessions with them), one customer per person, shown back in the file's shape."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import select

from inventory.db import session_scope
from inventory.importer import InventoryError, import_inventory
from inventory.importer_db import inventory_snapshot
from inventory.portal_access import find_user, signed_in, start_session
from inventory.portal_tables import PortalSession, PortalUser

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def cluster(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "software", "version": "9.8.0", "access": {"type": "direct"},
            "nodes": [{"hostname": f"{name}-n1"}]}  # fmt: skip


INVENTORY: dict[str, Any] = {
    "customers": [
        {
            "name": "acme",
            "timezone": "America/New_York",
            "contacts": [{"email": "ops@acme.example"}],
            "clusters": [cluster("acme-c1")],
            "portal_users": [{"email": "Ann@acme.example", "name": "Ann"}, {"email": "bob@acme.example"}],
        },
        {"name": "umbrella", "timezone": "UTC", "clusters": [cluster("umb-c1")]},
    ]
}


def write(tmp_path: Path, data: dict[str, Any], name: str = "inv.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def users(engine: Engine) -> list[tuple[str, str, str]]:
    with session_scope(engine) as session:
        rows = session.exec(select(PortalUser).order_by(PortalUser.mailbox)).all()
        return [(u.email, u.mailbox, str(u.customer_id)) for u in rows]


def test_import_remove_and_show(engine: Engine, tmp_path: Path) -> None:
    summary = import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="t")
    assert "customer 'acme': portal user 'Ann@acme.example' added" in summary.notes
    assert [u[:2] for u in users(engine)] == [
        ("Ann@acme.example", "ann@acme.example"),
        ("bob@acme.example", "bob@acme.example"),
    ]
    with session_scope(engine) as session:
        ann = find_user("ANN+anything@Acme.example", session=session)
        assert ann is not None and ann.id is not None
        start_session(ann.id, "h" * 64, "c" * 43, now=NOW, ttl=timedelta(hours=8), session=session)
        snapshot = inventory_snapshot(session=session)
    assert snapshot["customers"][0]["portal_users"] == [
        {"email": "Ann@acme.example", "name": "Ann"},
        {"email": "bob@acme.example", "name": ""},
    ]
    assert "portal_users" not in snapshot["customers"][1]

    removed = copy.deepcopy(INVENTORY)
    removed["customers"][0]["portal_users"] = [{"email": "bob@acme.example"}]
    summary = import_inventory(write(tmp_path, removed), engine=engine, actor="t")
    assert "customer 'acme': portal user 'Ann@acme.example' removed (signed out)" in summary.notes
    assert [u[0] for u in users(engine)] == ["bob@acme.example"]
    with session_scope(engine) as session:
        assert signed_in("h" * 64, now=NOW, session=session) is None
        assert session.exec(select(PortalSession)).all() == []


def test_a_user_moves_to_another_customer_and_loses_the_old_session(engine: Engine, tmp_path: Path) -> None:
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="t")
    with session_scope(engine) as session:
        bob = find_user("bob@acme.example", session=session)
        assert bob is not None and bob.id is not None
        start_session(bob.id, "b" * 64, "c" * 43, now=NOW, ttl=timedelta(hours=8), session=session)
    moved = copy.deepcopy(INVENTORY)
    moved["customers"][0]["portal_users"] = [{"email": "Ann@acme.example", "name": "Ann"}]
    moved["customers"][1]["portal_users"] = [{"email": "bob@acme.example"}]
    import_inventory(write(tmp_path, moved), engine=engine, actor="t")
    with session_scope(engine) as session:
        assert signed_in("b" * 64, now=NOW, session=session) is None
        bob = find_user("bob@acme.example", session=session)
        assert bob is not None
        assert session.get(PortalUser, bob.id) is not None
    [(_, _, acme_id), (_, _, umbrella_id)] = users(engine)
    assert acme_id != umbrella_id


def test_another_customers_user_not_in_the_file_is_refused_and_nothing_written(
    engine: Engine, tmp_path: Path
) -> None:
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="t")
    before = users(engine)
    other = {"customers": [{**INVENTORY["customers"][1], "portal_users": [{"email": "bob+x@acme.example"}]}]}
    path = write(tmp_path, other, "other.yaml")
    with pytest.raises(InventoryError) as info:
        import_inventory(path, engine=engine, actor="t")
    assert str(info.value) == (
        f"{path}:13: portal user 'bob+x@acme.example' is already a portal user of customer 'acme', "
        "which this file does not list; remove it there first"
    )
    assert users(engine) == before
