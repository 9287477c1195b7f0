"""One description of the inventory file (inventory/importer_model.py) serves three readers: the JSON
Schema that `upkeep inventory schema` prints must accept the lab's inventory and refuse unknown keys
with a standard validator (jsonschema), and what `inventory show --json` prints must import again into
the same database, changing nothing."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from inventory.db import make_engine, migrate, session_scope
from inventory.importer import InventoryError, import_inventory, load_inventory
from inventory.importer_db import inventory_snapshot

SHA = "ef" * 32

# Every key the file may hold, each one set (the lab's inventory has the common ones only).
FULL = f"""\
vendor_blackouts:
  - {{start: 2026-12-24, end: 2026-12-26, timezone: UTC, reason: Year-end freeze}}
customers:
  - name: acme
    timezone: America/New_York
    contacts:
      - {{email: ops@acme.example, name: Acme Ops, role: primary}}
      - {{email: cto@acme.example, role: escalation}}
    notice: {{product_update: 48h, cloud_release: 14d}}
    requires_approval: true
    holidays: {{country: US, subdivision: NY}}
    blackouts:
      - {{start: 2026-11-26, end: 2026-11-27, reason: Thanksgiving}}
      - {{start: 2027-01-01, end: 2027-01-01, timezone: Europe/Berlin}}
    portal_users:
      - {{email: ann@acme.example, name: Ann}}
      - {{email: bob@acme.example}}
    clusters:
      - name: acme-c1
        kind: software
        version: 9.8.0
        access: {{type: direct}}
        nodes:
          - {{hostname: acme-c1-n1, address: 127.0.0.1, port: 40001, user: root}}
          - {{hostname: acme-c1-n2}}
        windows:
          - {{days: "tue,thu", start: "02:00", duration: 4h}}
          - {{days: [sat, sunday], start: "22:30", duration: 90m, timezone: Europe/Berlin}}
      - name: acme-c2
        kind: cloud
        version: 9.9.0
        profile: large_v2
        ring: canary
        access: {{type: jump, host: jump.acme.example, port: 2222, user: upkeep}}
        nodes: [{{hostname: acme-c2-n1, address: "fd00::12"}}]
  - name: umbrella
    timezone: UTC
    clusters: []
releases:
  - {{version: 9.9.0, package: releases/p-9.9.0.tar.gz, sha256: {SHA}, from: [9.8.0]}}
  - {{version: 9.10.0, package: releases/p-9.10.0.tar.gz, sha256: {SHA}, from: [9.8.0, 9.9.0],
     deadline: 2026-12-31T00:00:00Z}}
oncall:
  timezone: Europe/Berlin
  handover: "09:00"
  rotation: weekly
  starts: 2026-12-07
  engineers:
    - {{name: Eve, email: eve@vendor.example, notify: "json://127.0.0.1:9/hook"}}
    - {{name: Finn, email: finn@vendor.example}}
  team_lead: {{name: Tia, email: tia@vendor.example}}
  escalation:
    - {{name: Sam, email: sam@vendor.example, role: support manager}}
  informed:
    - {{name: Vic, email: vic@vendor.example}}
"""


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`upkeep inventory schema > schema.json`, as an SRE would run it."""
    out = tmp_path_factory.mktemp("schema") / "schema.json"
    with out.open("w") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "upkeep", "inventory", "schema"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(out.read_text())
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def as_json(data: Any) -> Any:
    """YAML's dates as the strings an editor (and JSON) sees."""
    return json.loads(json.dumps(data, default=lambda value: value.isoformat()))


def schema_errors(schema: dict[str, Any], data: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(as_json(data))]


def test_schema_accepts_the_lab_inventory_and_refuses_unknown_keys(
    lab: Any, schema: dict[str, Any], tmp_path: Path
) -> None:
    data = yaml.safe_load(Path(lab.inventory_path).read_text())
    assert data["customers"] and data["releases"]  # the file `upkeep lab up` wrote, not an empty one
    assert schema_errors(schema, data) == []
    load_inventory(Path(lab.inventory_path))  # and the importer agrees

    for where, key in (
        ((), "colour"),
        (("customers", 0), "colour"),
        (("customers", 0, "clusters", 0, "nodes", 0), "colour"),
        (("customers", 0, "clusters", 0, "access"), "colour"),
        (("customers", 0, "clusters", 0, "windows", 0), "colour"),
    ):
        bad = copy.deepcopy(data)
        target = bad
        for step in where:
            target = target[step]
        target[key] = "red"
        errors = schema_errors(schema, bad)
        assert errors, f"an unknown key at {where} passed the schema"
        assert any("colour" in error for error in errors), errors
        path = tmp_path / f"bad-{len(where)}.yaml"
        path.write_text(yaml.safe_dump(bad, sort_keys=False))
        with pytest.raises(InventoryError, match=r":\d+: .*unknown key 'colour'"):
            load_inventory(path)


def test_schema_accepts_every_key_and_refuses_wrong_values(schema: dict[str, Any]) -> None:
    data = yaml.safe_load(FULL)
    assert schema_errors(schema, data) == []
    wrong = copy.deepcopy(data)
    wrong["customers"][0]["clusters"][0]["kind"] = "metal"
    wrong["customers"][0]["clusters"][0]["nodes"][0]["port"] = "22"
    wrong["customers"][0]["clusters"][1]["access"] = {"type": "jump"}  # no host
    errors = schema_errors(schema, wrong)
    assert any("'metal'" in error for error in errors), errors
    assert any("'22'" in error for error in errors), errors
    assert any("access" in error for error in errors), errors


def rows(engine: Engine) -> str:
    """Every row but the audit trail's, in primary-key order."""
    with engine.connect() as conn:
        return repr(
            [
                conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                for table in SQLModel.metadata.sorted_tables
                if table.name != "auditevent"
            ]
        )


def test_show_json_imports_again_unchanged(engine: Engine, tmp_path: Path, schema: dict[str, Any]) -> None:
    source = tmp_path / "full.yaml"
    source.write_text(FULL)
    import_inventory(source, engine=engine, actor="test")
    with session_scope(engine) as session:
        shown = inventory_snapshot(session=session)
    # Everything the file said comes back (dates as JSON strings, windows and notice normalised).
    acme = shown["customers"][0]
    assert acme["holidays"] == {"country": "US", "subdivision": "NY"}
    assert acme["notice"] == {"product_update": "48h", "cloud_release": "336h"}
    assert acme["requires_approval"] is True
    assert [u["email"] for u in acme["portal_users"]] == ["ann@acme.example", "bob@acme.example"]
    assert acme["blackouts"][0] == {
        "start": "2026-11-26",
        "end": "2026-11-27",
        "timezone": "America/New_York",
        "reason": "Thanksgiving",
    }
    assert acme["clusters"][0]["windows"][1] == {
        "days": ["sat", "sun"],
        "start": "22:30",
        "duration": "1h30m",
        "timezone": "Europe/Berlin",
    }
    assert shown["releases"][1]["deadline"] == "2026-12-31T00:00:00+00:00"
    assert shown["vendor_blackouts"][0]["reason"] == "Year-end freeze"
    assert shown["oncall"]["starts"] == "2026-12-07"
    assert [p["name"] for p in shown["oncall"]["engineers"]] == ["Eve", "Finn"]
    assert schema_errors(schema, shown) == []

    before = rows(engine)
    again = tmp_path / "shown.json"
    again.write_text(json.dumps(shown))
    summary = import_inventory(again, engine=engine, actor="test")
    assert not summary.changed, str(summary)
    assert rows(engine) == before
    with session_scope(engine) as session:
        assert inventory_snapshot(session=session) == shown

    # ...and into an empty database, the same inventory.
    fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        migrate(fresh)
        import_inventory(again, engine=fresh, actor="test")
        with session_scope(fresh) as session:
            assert inventory_snapshot(session=session) == shown
    finally:
        fresh.dispose()


def test_dates_may_be_quoted_as_json_writes_them(tmp_path: Path) -> None:
    text = FULL.replace("start: 2026-11-26", 'start: "2026-11-26"').replace(
        "starts: 2026-12-07", 'starts: "2026-12-07"'
    )
    path = tmp_path / "quoted.yaml"
    path.write_text(text)
    doc = load_inventory(path)
    assert doc.customers[0].blackouts[0].start == date(2026, 11, 26)
    assert doc.oncall is not None and doc.oncall.starts == date(2026, 12, 7)


def test_schema_and_importer_agree_on_null_and_on_simple_patterns(
    schema: dict[str, Any], tmp_path: Path
) -> None:
    # adv20i: the importer reads `key:` (null) as "the default" for every optional key, which the schema
    # refused (an editor flagged files that import); and values the importer refuses by a plain pattern
    # (sha256, profile, ssh user, version with leading zeros) passed the schema.
    def importer_accepts(data: Any) -> bool:
        path = tmp_path / "agree.yaml"
        path.write_text(yaml.safe_dump(as_json(data), sort_keys=False))
        try:
            load_inventory(path)
        except InventoryError:
            return False
        return True

    data = yaml.safe_load(FULL)
    nulls = copy.deepcopy(data)
    nulls["customers"][0].update(contacts=None, notice=None, requires_approval=None, blackouts=None)
    nulls["customers"][0]["clusters"][0].update(profile=None, ring=None, windows=None)
    nulls["customers"][0]["clusters"][0]["nodes"][0].update(address=None, port=None, user=None)
    nulls["customers"][0]["contacts"] = None
    assert importer_accepts(nulls)
    assert schema_errors(schema, nulls) == []

    for where, key, value in (
        (("releases", 0), "sha256", "AB" * 32),
        (("customers", 0, "clusters", 0), "profile", "Large"),
        (("customers", 0, "clusters", 0, "nodes", 0), "user", "Root"),
        (("customers", 0, "clusters", 0), "version", "09.8.0"),
        (("customers", 0), "timezone", "Mars/Olympus"),
    ):
        bad = copy.deepcopy(data)
        target = bad
        for step in where:
            target = target[step]
        target[key] = value
        assert not importer_accepts(bad), (key, value)
        assert schema_errors(schema, bad), f"{key}: {value!r} passed the schema but not the importer"
