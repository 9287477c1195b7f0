"""Product versions and upgrade paths: pure rules, no I/O.

A version is strictly MAJOR.MINOR.PATCH with plain decimal parts. Anything else is refused here, so a
version string can never carry shell metacharacters to a node.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import total_ordering

# ASCII: without it \d also matches other scripts' digits, and "9.1٠.0" (Arabic-Indic zero) passed
# as 9.10.0 while the look-alike string itself was stored and shown.
_VERSION = re.compile(r"^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$", re.ASCII)


class VersionError(ValueError):
    """A version string that is not MAJOR.MINOR.PATCH."""


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise VersionError(f"{text!r} is not a version (expected MAJOR.MINOR.PATCH, e.g. 9.10.0)")
        return cls(*(int(part) for part in match.groups()))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return (self.major, self.minor, self.patch) < (other.major, other.minor, other.patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def is_version(text: str) -> bool:
    try:
        Version.parse(text)
    except VersionError:
        return False
    return True


class NoUpgradePath(ValueError):
    """No chain of releases leads from one version to another."""


def upgrade_path(current: str, target: str, upgradable_from: Mapping[str, Iterable[str]]) -> list[str]:
    """The shortest chain of releases from `current` to `target`, e.g. ["9.9.0", "9.10.0"].

    `upgradable_from` maps each release version to the versions it can be installed over. Among paths of
    equal length the one through lower versions wins, so the choice is deterministic. Downgrades and
    same-version "upgrades" are refused.
    """
    start, goal = Version.parse(current), Version.parse(target)
    if goal == start:
        raise NoUpgradePath(f"cluster is already at {target}")
    if goal < start:
        raise NoUpgradePath(f"{target} is older than the current {current}: downgrades are not supported")
    if target not in upgradable_from:
        raise NoUpgradePath(f"no release {target} in the catalog")
    # Edges point from an installed version to the releases that accept it.
    successors: dict[str, list[str]] = {}
    for release, sources in upgradable_from.items():
        for source in sources:
            successors.setdefault(source, []).append(release)
    for releases in successors.values():
        releases.sort(key=Version.parse)
    came_from: dict[str, str] = {}
    queue = deque([current])
    while queue:
        here = queue.popleft()
        for nxt in successors.get(here, []):
            if nxt in came_from or nxt == current or Version.parse(nxt) <= Version.parse(here):
                continue
            came_from[nxt] = here
            if nxt == target:
                path = [nxt]
                while came_from[path[-1]] != current:
                    path.append(came_from[path[-1]])
                return path[::-1]
            queue.append(nxt)
    raise NoUpgradePath(f"no upgrade path from {current} to {target} in the release catalog")
