"""Reference solution of lesson 02's exercise: the USL's peak concurrency."""

from __future__ import annotations

import math


def usl_peak(sigma: float, kappa: float) -> float:
    # dX/dN = 0  <=>  1 - sigma - kappa * N**2 = 0  (the numerator of the derivative of lambda*N / D(N))
    if kappa <= 0:
        return math.inf
    return math.sqrt((1 - sigma) / kappa)
