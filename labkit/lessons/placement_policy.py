"""Lesson 07's placement policies: from a unit's decayed access counts per region, pick its home.

:class:`Hysteresis` moves a unit only when one region clearly dominates; :func:`most_accesses` follows the
majority whatever the margin and flaps (moves a unit back to a region it left, :func:`flaps`). :func:`replay`
runs any policy offline over a real access log, which is how the exercise judges the learner's policy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from labkit.checkpoints import checkpoint
from labkit.datasets.geo_store import REGIONS
from labkit.errors import BadParameter

__all__ = ["Hysteresis", "Policy", "check_flapping", "flaps", "most_accesses", "replay"]

Policy = Callable[[dict[str, float], str], str]


@dataclass(frozen=True)
class Hysteresis:
    """Move a unit only when one region has at least ``threshold`` of its recent accesses (and enough of them).

    Why a threshold above 1/2: a unit read evenly from both continents would otherwise follow the noise of each
    window and move back and forth (flap), paying a copy each time for nothing."""

    threshold: float = 0.75
    min_accesses: float = 10.0

    def __call__(self, counts: dict[str, float], current: str) -> str:
        total = sum(counts.values())
        if total < self.min_accesses:
            return current
        best = max(sorted(counts), key=lambda r: counts[r])
        return best if counts[best] / total >= self.threshold else current


def most_accesses(counts: dict[str, float], current: str) -> str:
    """The naive policy: the region with the most recent accesses, whatever the margin (it flaps)."""
    if not counts or sum(counts.values()) == 0:
        return current
    return max(sorted(counts), key=lambda r: (counts[r], r == current))


def flaps(history: dict[int, list[str]]) -> int:
    """Moves back to a region the unit had left before (A -> B -> A counts one)."""
    n = 0
    for homes in history.values():
        left: set[str] = set()
        for a, b in itertools.pairwise(homes):
            if a != b:
                if b in left:
                    n += 1
                left.add(a)
    return n


def replay(
    policy: Policy, log: list[tuple[int, int, str]], windows: int = 8, decay: float = 0.5, start: str = "us"
) -> tuple[dict[int, list[str]], float, float]:
    """Run ``policy`` offline over a real access log cut into ``windows``: the homes it would have chosen, and the
    remote-read share of the log's last round under the initial placement and under the policy's."""
    if not log:
        raise BadParameter("the access log is empty: run the experiment first")
    units = sorted({u for _, u, _ in log})
    home = {u: start for u in units}
    history = {u: [start] for u in units}
    counts = {u: {r: 0.0 for r in REGIONS} for u in units}
    size = max(1, len(log) // windows)
    for w in range(windows):
        for u in units:
            for r in REGIONS:
                counts[u][r] *= decay
        for _, u, r in log[w * size : (w + 1) * size]:
            counts[u][r] += 1
        for u in units:
            home[u] = policy(dict(counts[u]), home[u])
            history[u].append(home[u])
    last = [(u, r) for rr, u, r in log if rr == max(x[0] for x in log)]
    before = sum(1 for u, r in last if r != start) / len(last)
    after = sum(1 for u, r in last if r != home[u]) / len(last)
    return history, before, after


def check_flapping(
    history: dict[int, list[str]], moves: int | None = None, label: str = "", claim_prefix: str = ""
) -> None:
    n = flaps(history)
    if moves is None:
        moves = sum(sum(1 for a, b in itertools.pairwise(h) if a != b) for h in history.values())
    checkpoint(
        f"{claim_prefix}0 flapping under a stable access pattern (units moved back)",
        n,
        at_most=0,
        context=f"{label}{n} moves back among {moves} moves of {len(history)} units",
    )
