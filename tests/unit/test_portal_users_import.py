"""`portal_users:` in the inventory file: at most five distinct people per customer, one customer per
person, every problem at its FILE:LINE like the rest of the importer."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory.importer import InventoryError, load_inventory
from inventory.importer_model import mailbox_key

HEAD = """\
customers:
  - name: acme
    timezone: America/New_York
    clusters:
      - {name: acme-c1, kind: software, version: 9.8.0, access: {type: direct}, nodes: [{hostname: n1}]}
    portal_users:
"""
OTHER = """\
  - name: umbrella
    timezone: UTC
    clusters:
      - {name: umb-c1, kind: software, version: 9.8.0, access: {type: direct}, nodes: [{hostname: n2}]}
    portal_users:
"""


def load(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    return [str(p).replace(str(path), "FILE") for p in info.value.errors]


def users(*emails: str) -> str:
    return "".join(f"      - {{email: '{e}', name: User {i}}}\n" for i, e in enumerate(emails, 1))


def test_five_users_load_with_names(tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(HEAD + users(*(f"u{i}@acme.example" for i in range(1, 6))))
    [acme] = load_inventory(path).customers
    assert [(u.email, u.name) for u in acme.portal_users] == [
        (f"u{i}@acme.example", f"User {i}") for i in range(1, 6)
    ]


def test_a_sixth_person_is_refused_at_its_line(tmp_path: Path) -> None:
    text = HEAD + users(*(f"u{i}@acme.example" for i in range(1, 7)))
    assert load(tmp_path, text) == [
        "FILE:12: portal user 'u6@acme.example': customer 'acme' may have at most 5 portal users "
        "(distinct people); this is the sixth"
    ]


def test_case_duplicates_and_plus_aliases_are_one_person(tmp_path: Path) -> None:
    text = HEAD + users("ann@acme.example", "ANN@Acme.Example", "ann+portal@acme.example", "bob@acme.example")
    assert load(tmp_path, text) == [
        "FILE:8: portal user 'ANN@Acme.Example' is listed twice (first at line 7)",
        "FILE:9: portal user 'ann+portal@acme.example' is the same mailbox as 'ann@acme.example' "
        "(first at line 7)",
    ]


def test_aliases_do_not_make_room_for_a_sixth(tmp_path: Path) -> None:
    emails = ["a@x.example", "a+1@x.example", "b@x.example", "c@x.example", "d@x.example", "e@x.example"]
    problems = load(tmp_path, HEAD + users(*emails, "f@x.example"))
    assert problems[0].startswith("FILE:8: portal user 'a+1@x.example' is the same mailbox")
    assert problems[1].startswith("FILE:13: portal user 'f@x.example': customer 'acme' may have at most 5")
    assert len(problems) == 2


def test_one_person_signs_in_for_one_customer(tmp_path: Path) -> None:
    text = HEAD + users("ann@acme.example") + OTHER + users("Ann+umb@acme.example")
    assert load(tmp_path, text) == [
        "FILE:13: portal user 'Ann+umb@acme.example' is already a portal user of customer 'acme' "
        "(line 7); a person signs in for one customer"
    ]


def test_bad_entries_name_the_value_and_line(tmp_path: Path) -> None:
    text = (
        HEAD
        + "      - {email: 'not an address'}\n      - {name: nobody}\n      - {email: a@x.example, role: x}\n"
    )
    assert load(tmp_path, text) == [
        "FILE:7: portal user: email: 'not an address' is not a valid email address",
        "FILE:8: portal user: missing required key 'email'",
        "FILE:9: portal user: unknown key 'role' (allowed: email, name)",
    ]


def test_mailbox_key() -> None:
    assert mailbox_key("Ann+Portal@Acme.Example") == "ann@acme.example"
    assert mailbox_key("ann@acme.example") == "ann@acme.example"
