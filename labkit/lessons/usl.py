"""The Universal Scalability Law, fitted with scipy.

Neil Gunther's USL models throughput at concurrency N (clients, or processors) as

    X(N) = lambda * N / (1 + sigma * (N - 1) + kappa * N * (N - 1))

- ``lambda``: throughput of one client when nothing is shared (the slope at the origin);
- ``sigma`` (contention): the share of the work that is serialised -- queueing for a lock, a single
  row, a CPU; with sigma alone (Amdahl's law) throughput flattens at ``lambda / sigma``;
- ``kappa`` (coherency/crosstalk): a cost that grows with every pair of workers -- keeping caches,
  lock tables or buffers consistent; with kappa > 0 throughput *falls* past the peak
  ``N* = sqrt((1 - sigma) / kappa)``.

:func:`fit` runs a bounded non-linear least-squares fit (``scipy.optimize.curve_fit``) and returns the
parameters with 95 % confidence intervals (Student t on the covariance's standard errors), R^2 and N*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labkit.errors import BadParameter

__all__ = ["USLFit", "fit", "peak", "usl"]


def usl(n: Any, lam: float, sigma: float, kappa: float) -> Any:
    """X(N) of the USL (vectorised over ``n``)."""
    n = np.asarray(n, dtype=float)
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def peak(sigma: float, kappa: float) -> float:
    """N* = sqrt((1 - sigma) / kappa): where throughput is highest (inf when kappa is 0)."""
    if kappa <= 0:
        return math.inf
    return math.sqrt(max(0.0, 1 - sigma) / kappa)


@dataclass(frozen=True)
class USLFit:
    """A fitted USL: parameters, their 95 % confidence intervals, goodness of fit and the peak."""

    lam: float
    sigma: float
    kappa: float
    ci: dict[str, tuple[float, float]]
    r2: float
    n: tuple[float, ...]
    x: tuple[float, ...]

    @property
    def n_star(self) -> float:
        """Concurrency of peak throughput (inf when kappa is 0: throughput only flattens)."""
        return peak(self.sigma, self.kappa)

    @property
    def x_max(self) -> float:
        """The highest throughput the model allows: X(N*) (or lambda/sigma when kappa is 0)."""
        if math.isinf(self.n_star):
            return self.lam / self.sigma if self.sigma > 0 else math.inf
        return float(usl(self.n_star, self.lam, self.sigma, self.kappa))

    def predict(self, n: Any) -> Any:
        return usl(n, self.lam, self.sigma, self.kappa)

    def table(self) -> Any:
        """The parameters with their intervals, as a small DataFrame for the notebook."""
        import pandas as pd

        rows = [
            (name, getattr(self, attr), *self.ci[attr])
            for name, attr in (
                ("lambda (ops/s per client)", "lam"),
                ("sigma (contention)", "sigma"),
                ("kappa (coherency)", "kappa"),
            )
        ]
        rows.append(("N* (peak concurrency)", self.n_star, math.nan, math.nan))
        rows.append(("R^2", self.r2, math.nan, math.nan))
        return pd.DataFrame(rows, columns=["parameter", "estimate", "95% CI low", "95% CI high"])


def fit(n: Sequence[float], x: Sequence[float]) -> USLFit:
    """Fit the USL to throughputs ``x`` measured at concurrencies ``n`` (at least 4 points)."""
    from scipy import optimize, stats

    n_arr = np.asarray(n, dtype=float)
    x_arr = np.asarray(x, dtype=float)
    if n_arr.shape != x_arr.shape or n_arr.ndim != 1:
        raise BadParameter(f"give as many throughputs as concurrencies (got {n_arr.shape} and {x_arr.shape})")
    if len(n_arr) < 4 or len(set(n_arr.tolist())) < 4:
        raise BadParameter(
            f"the USL has 3 parameters: measure at least 4 different concurrencies (got {len(set(n_arr.tolist()))})"
        )
    if (n_arr < 1).any() or not np.isfinite(x_arr).all() or (x_arr <= 0).any():
        raise BadParameter("concurrencies must be >= 1 and throughputs finite and > 0 (a run that did nothing?)")
    order = np.argsort(n_arr)
    n_arr, x_arr = n_arr[order], x_arr[order]
    lam0 = float(x_arr[0] / n_arr[0])
    (lam, sigma, kappa), cov = optimize.curve_fit(
        usl, n_arr, x_arr, p0=(lam0, 0.05, 1e-4), bounds=([0, 0, 0], [np.inf, 1, 1]), maxfev=20_000
    )
    resid = x_arr - usl(n_arr, lam, sigma, kappa)
    ss_tot = float(np.sum((x_arr - x_arr.mean()) ** 2))
    r2 = 1 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 0.0
    dof = len(n_arr) - 3
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.isfinite(cov).all() else np.full(3, np.inf)
    t = float(stats.t.ppf(0.975, dof)) if dof > 0 else math.inf
    ci = {
        name: (float(v - t * s), float(v + t * s))
        for name, v, s in (("lam", lam, se[0]), ("sigma", sigma, se[1]), ("kappa", kappa, se[2]))
    }
    return USLFit(float(lam), float(sigma), float(kappa), ci, r2, tuple(n_arr.tolist()), tuple(x_arr.tolist()))
