"""Races made deterministic: another process's transaction commits at one chosen point of this one.

`meanwhile(monkeypatch, module, "name", other)` patches `module.name` so that the first time it is
called, `other()` runs just before it (or just after it, `after=True`): the other operator's import,
the dispatcher's claim, the flow recording a run's end. The list it returns holds what `other`
returned once it has run, so a test asserts the interleaving really happened (a race that never
happened proves nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def meanwhile(
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    name: str,
    other: Callable[[], Any],
    *,
    after: bool = False,
) -> list[Any]:
    """Patch `owner.name` so that `other()` runs once, before its first call (after it with `after`).
    `other` may itself call `owner.name` (another dispatcher's tick): that call is the original's."""
    original = getattr(owner, name)
    happened: list[Any] = []
    started = False

    def interleaved(*args: Any, **kwargs: Any) -> Any:
        nonlocal started
        first = not started
        started = True
        if first and not after:
            happened.append(other())
        found = original(*args, **kwargs)
        if first and after:
            happened.append(other())
        return found

    monkeypatch.setattr(owner, name, interleaved)
    return happened
