"""Lesson 07's exercise self-check: the learner's ``choose_home(counts, current)`` on small cases, then replayed
over the real access log of a run (remote reads must fall by half or more, no unit may flap)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.checkpoints import checkpoint
from labkit.errors import CheckpointFailed
from labkit.lessons.placement_policy import Policy, check_flapping, replay

__all__ = ["check_policy"]

if TYPE_CHECKING:
    from labkit.lessons.placement import PlacementResult


def check_policy(choose_home: Policy, res: PlacementResult, windows: int = 8) -> None:
    """Run the learner's ``choose_home(counts, current) -> region`` on small cases, then offline on the real access
    log of ``res`` (cut into ``windows``): remote reads must fall by half or more and no unit may flap."""
    try:
        _check_policy(choose_home, res, windows)
    except NotImplementedError:
        print("Not attempted yet: write choose_home in the cell above, then run this cell again.")


def _check_policy(choose_home: Policy, res: PlacementResult, windows: int) -> None:

    cases = [
        ({"us": 3.0, "eu": 2.0}, "us", "us", "too few accesses to know: stay"),
        ({"us": 48.0, "eu": 52.0}, "us", "us", "read evenly from both regions: stay (hysteresis)"),
        ({"us": 52.0, "eu": 48.0}, "eu", "eu", "read evenly from both regions: stay (hysteresis)"),
        ({"us": 5.0, "eu": 95.0}, "us", "eu", "95% of the reads come from eu: move there"),
        ({"us": 90.0, "eu": 10.0}, "us", "us", "already where it is read: stay"),
    ]
    for counts, current, want, why in cases:
        got = choose_home(dict(counts), current)
        if got != want:
            raise CheckpointFailed(
                f"choose_home({counts}, current={current!r}) returned {got!r}, expected {want!r}: {why}"
            )
    history, before, after = replay(choose_home, res.log, windows=windows)
    checkpoint(
        "exercise: your policy halves the remote reads of the real access log",
        1 - after / max(before, 1e-9),
        at_least=0.5,
        context=f"remote share {before:.0%} with every unit in the US, {after:.0%} with yours",
    )
    check_flapping(history, label="replayed over the access log in windows: ", claim_prefix="exercise: ")
