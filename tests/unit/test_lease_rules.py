"""The orphan rule for running runs (flows/lease.py) and how often a lease is renewed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.lease import expired, renew_every

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lease_until", "orphaned"),
    [
        (None, False),  # no lease: nothing says it was abandoned
        (NOW + timedelta(seconds=1), False),
        (NOW, True),  # runs out at that instant, as the SQL form (lease_until <= now) says
        (NOW - timedelta(seconds=1), True),
        (NOW - timedelta(days=30), True),
    ],
)
def test_a_running_run_is_orphaned_once_its_lease_ran_out(lease_until: datetime | None, orphaned: bool):
    assert expired(lease_until, NOW) is orphaned


def test_a_lease_gets_ten_renewals_before_it_runs_out():
    assert renew_every(timedelta(minutes=5)) == 30.0
    assert renew_every(timedelta(seconds=30)) == 3.0


def test_lease_settings_refuse_a_lease_too_short_to_renew(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from upkeep.settings import SettingsError, load_settings

    monkeypatch.setenv("UPKEEP_HOME", str(tmp_path))
    monkeypatch.setenv("UPKEEP_RUN_LEASE_SECONDS", "5")
    with pytest.raises(SettingsError, match=r"UPKEEP_RUN_LEASE_SECONDS.*'5'"):
        load_settings()
