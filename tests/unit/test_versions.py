from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling.versions import NoUpgradePath, Version, VersionError, is_version, upgrade_path

CATALOG = {"9.8.0": [], "9.9.0": ["9.8.0"], "9.10.0": ["9.8.0", "9.9.0"], "10.0.0": ["9.10.0"]}


def test_versions_order_numerically_not_lexically():
    assert Version.parse("9.10.0") > Version.parse("9.9.0")
    assert str(Version.parse("10.0.3")) == "10.0.3"


@pytest.mark.parametrize(
    "text",
    ["1.0; touch /tmp/pwned", "9.10", "9.10.0.1", "v9.10.0", "09.1.0", "9.1.0\n", "$(id)", "９.1.0", ""],
)
def test_anything_but_plain_major_minor_patch_is_refused(text: str):
    with pytest.raises(VersionError, match="is not a version"):
        Version.parse(text)
    assert not is_version(text)


@settings(deadline=None)
@given(st.text(max_size=30))
def test_parsed_versions_round_trip_and_carry_no_shell_syntax(text: str):
    if is_version(text):
        assert str(Version.parse(text)) == text
        assert set(text) <= set("0123456789.")


def test_direct_and_multi_hop_paths():
    assert upgrade_path("9.8.0", "9.10.0", CATALOG) == ["9.10.0"]
    assert upgrade_path("9.8.0", "10.0.0", CATALOG) == ["9.10.0", "10.0.0"]


@pytest.mark.parametrize(
    ("current", "target", "reason"),
    [
        ("9.10.0", "9.9.0", "downgrades are not supported"),
        ("9.9.0", "9.9.0", "already at"),
        ("9.8.0", "11.0.0", "no release 11.0.0"),
        ("9.7.0", "9.10.0", "no upgrade path from 9.7.0"),
    ],
)
def test_impossible_paths_say_why(current: str, target: str, reason: str):
    with pytest.raises(NoUpgradePath, match=reason):
        upgrade_path(current, target, CATALOG)
