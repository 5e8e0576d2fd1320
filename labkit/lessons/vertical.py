"""Lesson 02 -- the limits of vertical scaling: one Postgres, more clients, more CPU, more money.

The experiment is a pgbench-like mix on a real Postgres (pgbench's four tables; a read is pgbench's
``-S`` lookup of one account, a write is its TPC-B-like transaction -- account, teller and branch
updates plus a history insert -- as one statement), driven by ``labkit.load`` with N closed-loop
clients. Each client spends ``think_ms`` between transactions (application work: rendering, network),
so a few clients cannot saturate the server by themselves and the curve has room to rise.

- :func:`client_sweep`: throughput against the number of clients, optionally with the server's CPU
  capped by a real cgroup (``labkit.cgroups.CpuLimit`` on the postmaster: every backend is forked from
  it, so every backend is capped too).
- :func:`cpu_sweep`: throughput at a fixed client count against the CPU the server may use.
- The Universal Scalability Law (:mod:`labkit.lessons.usl`) fitted to our points and to a published
  pgbench table, and :func:`cost_table`: what a throughput costs on bigger machines of a public price list.

Connections are opened before the clock starts (pgbench also reports tps "without initial connection
time"), so a sweep measures transactions, not connection storms.

The parts live in their own modules (``vertical_bench``: the workload, its warm driver, the CPU cap and one
measurement; ``vertical_cost``: the published table, prices and cost; ``vertical_exercise``: the learner's
check). This module keeps the sweeps, their claims and plots, and re-exports the rest: ``vertical.X`` works
for all of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from labkit.checkpoints import checkpoint
from labkit.datasets.tables import DATASETS
from labkit.errors import BadParameter
from labkit.lessons import usl
from labkit.lessons.vertical_bench import (
    ACCOUNTS_PER_BRANCH,
    READ_SQL,
    WRITE_SQL,
    WarmPostgres,
    cap_status,
    cpu_cap,
    measure,
    prepare,
    server_pid,
)
from labkit.lessons.vertical_cost import (
    PRICES_CSV,
    PUBLISHED_CSV,
    check_cost_rises,
    check_published_peak,
    cost_table,
    plot_cost,
    prices,
    published,
)
from labkit.lessons.vertical_exercise import check_n_star

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ACCOUNTS_PER_BRANCH",
    "DATASETS",
    "PRICES_CSV",
    "PUBLISHED_CSV",
    "READ_SQL",
    "WRITE_SQL",
    "WarmPostgres",
    "cap_status",
    "check_cost_rises",
    "check_knee",
    "check_n_star",
    "check_published_peak",
    "check_usl_fit",
    "client_sweep",
    "clients_up_to",
    "cost_table",
    "cpu_cap",
    "cpu_sweep",
    "defaults",
    "efficiency",
    "measure",
    "plot_cost",
    "plot_cpu",
    "plot_sweep",
    "prepare",
    "prices",
    "published",
    "server_pid",
    "sleep_sweep",
]


def defaults() -> dict[str, Any]:
    """The notebook's knobs for the current profile."""
    from labkit import profile

    return {
        "max_clients": 64,
        # long enough for five interleaved rounds per client count: under a small cap a single short round
        # at 32+ clients can stall for most of its length, and the best of five is a stable estimate
        "duration": profile.pick(6.0, 3.0),
        "read_ratio": 1.0,
        "think_ms": 20.0,
        # 0.1 core, not less: at 0.05 the quota is 1 ms per 20 ms CFS period and the curve past the knee depends on
        # how transactions align with the throttling (16 clients: 160-291 tps between sweeps, USL R^2 0.70-0.97);
        # at 0.1 the knee still lands at ~12 clients and the fit is stable (R^2 0.97-0.99)
        "cpu_limit": 0.1,
        "scale": int(profile.pick(4, 1)),
        "sweep_clients": 16,
        "cpus": [0.05, 0.1, 0.25, 0.5, 1.0],
    }


def _sweep_clients(clients: list[int]) -> list[int]:
    if not clients or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in clients):
        raise BadParameter(f"clients={clients!r}: give client counts as integers >= 1, e.g. [1, 2, 4, 8, 16, 32, 64]")
    if max(clients) > 150:
        raise BadParameter(f"{max(clients)} clients: at most 150 (the lab's Postgres allows 200 connections)")
    return sorted(set(clients))


def clients_up_to(max_clients: int) -> list[int]:
    """1, 2, 4, ... up to ``max_clients`` (included): the sweep's client counts."""
    if isinstance(max_clients, bool) or not isinstance(max_clients, int) or not 8 <= max_clients <= 150:
        raise BadParameter(f"max_clients={max_clients!r}: sweep up to 8..150 clients (the USL needs 4 points or more)")
    out = [1]
    while out[-1] * 2 < max_clients:
        out.append(out[-1] * 2)
    return out + [max_clients]


def client_sweep(
    dsn: str,
    accounts: int,
    clients: list[int],
    *,
    duration: float,
    read_ratio: float = 1.0,
    think_ms: float = 20.0,
    cpu_limit: float | None = None,
    pid: int | None = None,
    rounds: int = 5,
    progress: Callable[[Any], Any] | None = None,
) -> pd.DataFrame:
    """Throughput at each client count, with the server capped to ``cpu_limit`` cores (None: uncapped).

    Each client count is measured ``rounds`` times for ``duration / rounds`` seconds, the rounds
    interleaved over all counts in a shuffled order, and the best run kept (``tps``; the median is in
    ``tps_median``). On a shared machine other programs only ever slow a run down, so the fastest of a few
    interleaved runs is the least disturbed estimate -- the reasoning behind ``timeit`` reporting its
    minimum time -- and interleaving spreads the drift of the machine's load over every point.
    """
    import numpy as np
    import pandas as pd

    clients = _sweep_clients(clients)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise BadParameter(f"rounds={rounds!r}: measure each client count at least once")
    drv = WarmPostgres(dsn, max(clients))
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in clients}
    rng = np.random.default_rng(len(clients))
    try:
        with cpu_cap(pid, cpu_limit) as cap:
            for _ in range(rounds):
                for n in rng.permutation(clients).tolist():
                    runs[n].append(
                        measure(drv, accounts, n, duration=duration / rounds, read_ratio=read_ratio, think_ms=think_ms)
                    )
                    if progress is not None:
                        progress(runs[n][-1])
            throttled = cap.throttled_seconds() if cap is not None else 0.0
    finally:
        drv.close_all()
    rows = []
    for n in clients:
        r = runs[n]
        rows.append(
            {
                "clients": n,
                "tps": max(x["tps"] for x in r),
                "tps_median": float(np.median([x["tps"] for x in r])),
                "tps_min": min(x["tps"] for x in r),
                "p50_ms": float(np.median([x["p50_ms"] for x in r])),
                "p99_ms": float(np.median([x["p99_ms"] for x in r])),
                "errors": sum(x["errors"] for x in r),
                "cpu_limit": cpu_limit,
                "error_kinds": {k: v for x in r for k, v in x["error_kinds"].items()},
            }
        )
    df = pd.DataFrame(rows)
    df.attrs.update(throttled_s=throttled, read_ratio=read_ratio, think_ms=think_ms, rounds=rounds)
    return df


def cpu_sweep(
    dsn: str,
    accounts: int,
    pid: int | None,
    cpus: list[float],
    *,
    clients: int,
    duration: float,
    read_ratio: float = 1.0,
    think_ms: float = 20.0,
) -> pd.DataFrame:
    """Throughput at ``clients`` clients against the cores the server may use (a real CFS quota)."""
    import pandas as pd

    drv = WarmPostgres(dsn, clients)
    rows = []
    try:
        for c in cpus:
            with cpu_cap(pid, c):
                rows.append(
                    {
                        **measure(drv, accounts, clients, duration=duration, read_ratio=read_ratio, think_ms=think_ms),
                        "cpu_limit": c,
                    }
                )
    finally:
        drv.close_all()
    return pd.DataFrame(rows)


def sleep_sweep(dsn: str, clients: list[int], *, sleep_ms: float = 50.0, duration: float = 1.0) -> pd.DataFrame:
    """A workload that is sleep-bound by construction (``SELECT pg_sleep``): it scales linearly."""
    import pandas as pd

    clients = _sweep_clients(clients)
    drv = WarmPostgres(dsn, max(clients))
    sql = f"SELECT pg_sleep({float(sleep_ms) / 1000})"

    async def nap(ctx: Any, op: Any) -> None:
        try:
            await ctx.conn.fetch(sql)
        except (OSError, psycopg.OperationalError):
            ctx.conn.lk_broken = True
            raise

    try:
        rows = [
            measure(drv, 1, n, duration=duration, read_ratio=1.0, think_ms=0, fn=nap, name="pg_sleep") for n in clients
        ]
    finally:
        drv.close_all()
    return pd.DataFrame(rows)


def efficiency(df: pd.DataFrame) -> float:
    """Throughput at the most clients over the linear projection from the fewest: 1 = perfectly linear."""
    d = df.sort_values("clients")
    n0, x0 = float(d["clients"].iloc[0]), float(d["tps"].iloc[0])
    n1, x1 = float(d["clients"].iloc[-1]), float(d["tps"].iloc[-1])
    if n1 <= n0 or x0 <= 0:
        raise BadParameter("a knee needs throughput measured at two or more client counts")
    return x1 / (x0 * n1 / n0)


# -- checkpoints ----------------------------------------------------------------------------------


def check_knee(df: pd.DataFrame, max_efficiency: float = 0.5) -> None:
    """Throughput at the most clients is below the linear projection from the fewest by a clear margin."""
    e = efficiency(df)
    n = int(df["clients"].max())
    checkpoint(
        f"a knee: at {n} clients throughput is at most {max_efficiency:.0%} of the linear projection",
        e,
        at_most=max_efficiency,
        context=f"{df.sort_values('clients')['tps'].round(0).tolist()} tps at clients {sorted(df['clients'].tolist())}",
    )


def check_usl_fit(fit: usl.USLFit, min_r2: float = 0.9) -> None:
    """The USL describes the points (R^2) and finds contention or coherency (sigma or kappa > 0)."""
    ctx = f"sigma={fit.sigma:.3g}, kappa={fit.kappa:.3g}, R^2={fit.r2:.3f}"
    checkpoint(
        "the USL fit finds contention or coherency (sigma or kappa > 0)",
        max(fit.sigma, fit.kappa),
        at_least=1e-6,
        context=ctx,
    )
    checkpoint(f"the USL fit explains the measurements (R^2 >= {min_r2})", fit.r2, at_least=min_r2, context=ctx)


# -- plots ----------------------------------------------------------------------------------------


def plot_sweep(df: pd.DataFrame, fit: usl.USLFit, title: str = "", ax: Any = None) -> Any:
    """Measured throughput vs clients, the USL curve, and the linear projection from the fewest clients."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
    d = df.sort_values("clients")
    xs = np.linspace(1, float(d["clients"].max()) * 1.05, 200)
    n0, x0 = float(d["clients"].iloc[0]), float(d["tps"].iloc[0])
    ax.plot(xs, x0 * xs / n0, ":", color="grey", label="linear projection")
    ax.plot(xs, fit.predict(xs), "-", color="C1", label=f"USL: σ={fit.sigma:.3f}, κ={fit.kappa:.2g}, R²={fit.r2:.2f}")
    ax.plot(d["clients"], d["tps"], "o", color="C0", label="measured")
    if not math.isinf(fit.n_star) and fit.n_star <= xs[-1]:
        ax.axvline(fit.n_star, color="C1", ls="--", lw=1, label=f"N* = {fit.n_star:.1f}")
    ax.set_ylim(0, max(float(d["tps"].max()), fit.x_max if math.isfinite(fit.x_max) else 0) * 1.3)
    ax.set_xlabel("concurrent clients N")
    ax.set_ylabel("throughput (transactions/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if fig is not None:
        fig.tight_layout()
    return fig or ax.figure


def plot_cpu(df: pd.DataFrame) -> Any:
    """Throughput against the cores the server may use, with proportional scaling from the smallest cap."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    d = df.sort_values("cpu_limit")
    c0, x0 = float(d["cpu_limit"].iloc[0]), float(d["tps"].iloc[0])
    ax.plot(d["cpu_limit"], x0 * d["cpu_limit"] / c0, ":", color="grey", label="proportional to CPU")
    ax.plot(d["cpu_limit"], d["tps"], "o-", label="measured")
    ax.set_xlabel("CPU the server may use (cores, cgroup quota)")
    ax.set_ylabel("throughput (transactions/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
