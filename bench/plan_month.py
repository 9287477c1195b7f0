"""Plan one month's cloud release for N synthetic cloud clusters with the pure rules only (no database).

    .venv/bin/python bench/plan_month.py --clusters 10000 [--seed S] [--now 2026-12-08T09:00:00Z] [--stagger]

Each cluster gets a random zone, 1-2 weekly windows, sometimes a customer blackout (and everyone the
vendor's year-end freeze), a contract notice term, 1-9 nodes, sometimes an open P0/P1 case, an old
version without an upgrade path, or a customer deferral. It is planned as `flows.cloud_release` plans
it: upgrade path (scheduling.versions), then the first slot (scheduling.slots.find_slot) after the notice,
outside blackouts, before the next monthly release (release calendar); an open case skips the cluster.
Deferrals go through scheduling.deferral.check_deferral and a new slot at or after the asked time.
`--stagger` shows the alternative the planner does not take: no slot before the earlier rings' last
announced slot end plus the soak (it pushes much of the broad ring out of the month).

Clusters are generated and planned one at a time, ring by ring, and only counters are kept, so memory
does not grow with N. The last line is `plan_month clusters=N seconds=S` (S: the planning itself).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from scheduling.blackouts import Blackout
from scheduling.deferral import DeferralPolicy, check_deferral
from scheduling.errors import NoSlot, SlotBlocked
from scheduling.release_calendar import ReleaseCalendar
from scheduling.slots import estimate_duration, find_slot
from scheduling.versions import NoUpgradePath, upgrade_path
from scheduling.waves import RINGS_DEFAULT
from scheduling.windows import Interval, WeeklyWindow

ZONES = (
    "America/New_York",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Europe/Berlin",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Asia/Singapore",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "UTC",
    "Africa/Johannesburg",
)
RING_SHARE = {"canary": 0.02, "early": 0.18, "broad": 0.80}
CATALOG = {"9.9.0": ["9.8.0"], "9.10.0": ["9.9.0"], "9.11.0": ["9.10.0"]}
TARGET = "9.11.0"
PER_NODE = timedelta(minutes=10)
SOAK = timedelta(hours=1)
DEFERRALS = DeferralPolicy()


@dataclass(frozen=True)
class Synthetic:
    ring: str
    version: str
    windows: list[WeeklyWindow]
    blackouts: list[Blackout]
    notice: timedelta
    nodes: int
    open_case: bool
    defer_by: timedelta | None


def clusters(count: int, rng: random.Random, month: date, freeze: Blackout) -> Iterator[Synthetic]:
    """`count` clusters, ring by ring (canary first), generated on demand."""
    sizes = {ring: int(count * share) for ring, share in RING_SHARE.items()}
    sizes["broad"] += count - sum(sizes.values())
    for ring in RINGS_DEFAULT:
        for _ in range(sizes[ring]):
            zone = rng.choice(ZONES)
            windows = [
                WeeklyWindow(
                    frozenset(rng.sample(range(7), rng.randint(1, 4))),
                    clock(rng.randrange(24), rng.choice((0, 30))),
                    timedelta(hours=rng.randint(2, 8)),
                    zone,
                )
                for _ in range(rng.randint(1, 2))
            ]
            blackouts = [freeze]
            if rng.random() < 0.15:
                start = month + timedelta(days=rng.randrange(28))
                blackouts.append(
                    Blackout(start, start + timedelta(days=rng.randrange(5)), zone, "change freeze")
                )
            yield Synthetic(
                ring=ring,
                version="9.8.0" if rng.random() < 0.01 else "9.10.0",
                windows=windows,
                blackouts=blackouts,
                notice=timedelta(hours=rng.choice((0, 24, 72, 168, 168, 168, 336))),
                nodes=rng.randint(1, 9),
                open_case=rng.random() < 0.02,
                defer_by=timedelta(hours=rng.randint(12, 7 * 24)) if rng.random() < 0.10 else None,
            )


@lru_cache(maxsize=256)  # once per distinct installed version, as a planner pass would
def path_to_target(version: str) -> tuple[str, ...] | None:
    try:
        return tuple(upgrade_path(version, TARGET, CATALOG))
    except NoUpgradePath:
        return None


def plan(
    cluster: Synthetic, *, now: datetime, until: datetime, floor: datetime | None
) -> tuple[str, Interval | None]:
    """(status, announced slot) as the cloud-release planner decides it, then the customer's deferral
    (status "deferred" when it is allowed; the announced slot is what the next ring's floor sees)."""
    path = path_to_target(cluster.version)
    if path is None:
        return "blocked: no path", None
    if len(path) > 1:
        return "blocked: several steps", None
    estimate = estimate_duration(cluster.nodes, PER_NODE)

    def slot(notice: timedelta, not_before: datetime | None, blocked: bool = False) -> Interval:
        return find_slot(
            now=now,
            windows=cluster.windows,
            blackouts=cluster.blackouts,
            notice=notice,
            estimate=estimate,
            blocked_by_case=blocked,
            not_before=not_before,
            horizon=until - now,
        )

    try:
        announced = slot(cluster.notice, floor, cluster.open_case)
    except SlotBlocked:
        return "skipped: open case", None
    except NoSlot:
        return "blocked: no slot this month", None
    if cluster.defer_by is None:
        return "planned", announced

    def allowed(new_start: datetime) -> bool:
        return check_deferral(
            DEFERRALS,
            current_start=announced.start,
            new_start=new_start,
            deferrals_so_far=0,
            deadline=until,
            now=now,
        ).allowed

    asked = announced.start + cluster.defer_by
    try:
        moved = slot(timedelta(0), asked) if allowed(asked) else None
    except NoSlot:
        moved = None
    return ("deferred" if moved and allowed(moved.start) else "deferral refused"), announced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--now", default="2026-12-08T09:00:00+00:00", help="the release moment (UTC)")
    parser.add_argument("--memory", action="store_true", help="also report the peak of traced memory")
    parser.add_argument(
        "--stagger", action="store_true", help="no slot before the earlier rings' last slot end + soak"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"plan_month seed={seed}")
    now = datetime.fromisoformat(args.now).astimezone(UTC)
    until = ReleaseCalendar().next_occurrences(now, 1)[0]  # the next monthly release
    freeze = Blackout(date(now.year, 12, 24), date(now.year, 12, 26), "UTC", "year-end freeze", "vendor")
    rng = random.Random(seed)
    if args.memory:
        tracemalloc.start()
    started, cpu = time.perf_counter(), time.process_time()
    statuses: Counter[tuple[str, str]] = Counter()
    days: Counter[date] = Counter()
    ring_end: dict[str, datetime] = {}
    for cluster in clusters(args.clusters, rng, now.date(), freeze):
        earlier = [ring_end[r] for r in RINGS_DEFAULT[: RINGS_DEFAULT.index(cluster.ring)] if r in ring_end]
        floor = max(earlier) + SOAK if earlier and args.stagger else None
        status, announced = plan(cluster, now=now, until=until, floor=floor)
        statuses[cluster.ring, status] += 1
        if announced is not None:
            days[announced.start.date()] += 1
            ring_end[cluster.ring] = max(announced.end, ring_end.get(cluster.ring, announced.end))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    for ring in RINGS_DEFAULT:
        counts = ", ".join(f"{status} {n}" for (r, status), n in sorted(statuses.items()) if r == ring)
        last = f"{ring_end[ring]:%Y-%m-%d %H:%M}" if ring in ring_end else "-"
        print(f"  {ring:6} {counts}; last announced slot ends {last}")
    busiest = days.most_common(1)[0] if days else ("-", 0)
    window = f"{len(days)} days before {until:%Y-%m-%d %H:%M} UTC"
    print(f"  updates start on {window}; busiest {busiest[0]} ({busiest[1]})")
    if args.memory:
        print(f"  peak traced memory {tracemalloc.get_traced_memory()[1] / 1024:.0f} KiB")
    print(f"  cpu seconds {cpu:.2f} (wall {seconds:.2f}; the machine may be shared)")
    print(f"plan_month clusters={args.clusters} seconds={seconds:.2f}")


if __name__ == "__main__":
    main()
