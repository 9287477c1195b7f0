"""Portal users are people: an address whose local part is a role or distribution name (support@,
noreply@, admin@, ... the setting portal_role_addresses) is refused by the import with one line naming
it and FILE:LINE, and nothing is written. The list is a setting; empty refuses none."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from inventory.importer import InventoryError, load_inventory
from tests.portal.conftest import INVENTORY
from tests.support.cli import upkeep_in_process
from upkeep.settings import Settings


def inventory_with(tmp_path: Path, *emails: str) -> Path:
    data: dict[str, Any] = copy.deepcopy(INVENTORY)
    data["customers"][0]["portal_users"] = [{"email": email} for email in emails]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_role_addresses_are_refused_by_the_default_list_with_file_and_line(tmp_path: Path) -> None:
    roles = Settings(_env_file=None).role_addresses()  # type: ignore[call-arg]
    assert {"support", "admin", "noreply", "no-reply", "postmaster", "info"} <= roles
    path = inventory_with(tmp_path, "ann@acme.example", "Support+portal@acme.example", "noreply@acme.example")
    with pytest.raises(InventoryError) as refused:
        load_inventory(path, role_addresses=roles)
    lines = str(refused.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == (
        f"{path}:{line_of(path, 'Support+portal@')}: portal user 'Support+portal@acme.example' is a role or "
        "distribution address (support@); portal users are people (the setting portal_role_addresses lists "
        "these names)"
    )
    assert lines[1].startswith(f"{path}:{line_of(path, 'noreply@')}: portal user 'noreply@acme.example'")
    # People whose names merely contain a role word are people; without a list nothing is refused.
    load_inventory(
        inventory_with(tmp_path, "supportive.sam@acme.example", "ann.admin@acme.example"),
        role_addresses=roles,
    )
    load_inventory(path)


def test_the_cli_refuses_with_one_line_writes_nothing_and_the_list_is_a_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env |= {"UPKEEP_HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"}
    path = inventory_with(tmp_path, "ann@acme.example", "helpdesk@acme.example")
    refused = upkeep_in_process("inventory", "import", str(path), env=env)
    assert refused.returncode == 1, refused
    assert (
        f"{path}:{line_of(path, 'helpdesk@')}: portal user 'helpdesk@acme.example' is a role"
        in refused.stderr
    )
    assert "Traceback" not in refused.stderr + refused.stdout
    shown = upkeep_in_process("inventory", "show", "--json", env=env, check=True)
    assert '"acme"' not in shown.stdout  # nothing written

    env["UPKEEP_PORTAL_ROLE_ADDRESSES"] = "ops, it"  # the vendor's own list: helpdesk@ is a person here
    upkeep_in_process("inventory", "import", str(path), env=env, check=True)
    refused = upkeep_in_process(
        "inventory", "import", str(inventory_with(tmp_path, "it@acme.example")), env=env
    )
    assert refused.returncode == 1 and "portal user 'it@acme.example' is a role" in refused.stderr


@pytest.mark.parametrize(
    "email",
    [
        "no.reply@acme.example",
        "Help_Desk@acme.example",
        "web-master+x@acme.example",
        "do_not_reply@acme.example",
    ],
)
def test_a_role_name_with_other_separators_is_still_a_role_address(tmp_path: Path, email: str) -> None:
    """The list has noreply and no-reply, helpdesk, webmaster, donotreply; the same names spelt with
    '.', '_' or '-' between the words passed the import as people (adversarial review of #17)."""
    roles = Settings(_env_file=None).role_addresses()  # type: ignore[call-arg]
    with pytest.raises(InventoryError) as refused:
        load_inventory(inventory_with(tmp_path, "ann@acme.example", email), role_addresses=roles)
    assert f"portal user {email!r} is a role or distribution address" in str(refused.value)
