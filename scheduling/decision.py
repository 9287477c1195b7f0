"""`Decision`: the answer of a yes/no rule, with the reason a person can read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """`allowed` plus why; refusals say exactly which limit was hit, e.g. "already deferred 2 times"."""

    allowed: bool
    reason: str

    @classmethod
    def allow(cls, reason: str) -> Decision:
        return cls(True, reason)

    @classmethod
    def refuse(cls, reason: str) -> Decision:
        return cls(False, reason)
