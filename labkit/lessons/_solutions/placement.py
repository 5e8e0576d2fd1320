"""Reference solution of lesson 07's exercise (never imported by a notebook; the tests run it)."""

from __future__ import annotations


def choose_home(counts: dict[str, float], current: str) -> str:
    """Stay unless one region has at least 70% of a unit's recent accesses, and there are at least 10 of them.

    The 70% threshold is the hysteresis: a unit read about evenly from both regions stays where it is instead of
    following each window's noise back and forth."""
    total = sum(counts.values())
    if total < 10:
        return current
    best = max(counts, key=lambda region: counts[region])
    return best if counts[best] >= 0.7 * total else current
