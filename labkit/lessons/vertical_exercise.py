"""Lesson 02's exercise self-check: the learner's ``usl_peak(sigma, kappa)`` against the peak of every fitted
curve (and no peak at all when kappa is 0)."""

from __future__ import annotations

import math
from collections.abc import Callable

from labkit.errors import CheckpointFailed
from labkit.lessons import usl

__all__ = ["check_n_star"]


def check_n_star(fn: Callable[[float, float], float], fits: dict[str, usl.USLFit]) -> None:
    """Exercise: ``fn(sigma, kappa)`` must give the fitted peak of each measured fit (and inf with kappa = 0)."""
    try:
        fn(0.1, 0.01)
    except NotImplementedError:
        print("Not attempted yet: write usl_peak(sigma, kappa) and run this cell again")
        return
    cases = [(name, f.sigma, f.kappa) for name, f in fits.items()] + [("a made-up fit", 0.2, 0.0008)]
    for name, s, k in cases:
        want = usl.peak(s, k)
        got = float(fn(s, k))
        if not (math.isinf(want) and math.isinf(got)) and not abs(got - want) <= 1e-6 * max(1.0, abs(want)):
            raise CheckpointFailed(
                f"{name} (sigma={s:.4g}, kappa={k:.4g}): usl_peak gave {got:.4g}, expected "
                f"{want:.4g} -- where dX/dN = 0: N* = sqrt((1 - sigma) / kappa)"
            )
    if not math.isinf(float(fn(0.1, 0.0))):
        raise CheckpointFailed("with kappa = 0 throughput never falls, so there is no peak: return math.inf")
    print("PASS  exercise: usl_peak gives the peak of every fitted curve")
