"""Lesson 10 — the thundering herd: one hot key, many readers, repeated invalidations.

A celebrity's post is read by N concurrent clients (threads, each with its own memcached connection;
like the web servers of an app they share a bounded pool of Postgres connections, so 200 readers
never exceed what the server -- or a class server shared by many learners -- accepts). A writer
invalidates the key every ``interval`` seconds. Recomputing the card is made
explicitly expensive (``pg_sleep(cost)`` before the render query, the way a real card joins several
tables and services), so a herd of recomputes is a real load on the real Postgres.

Strategies (all on the real memcached, meta protocol):
- ``none``: get; on a miss every client recomputes and sets.
- ``lock``: the classic guard: on a miss, ``add lock:<key>``; the one that stores it recomputes, the
  others sleep and retry.
- ``lease``: ``mg <key> N<ttl>``: on a miss memcached hands exactly one client a win (W) and answers
  the others Z (someone is on it); the winner sets with the lease's CAS, the others back off and retry.
- ``stale``: invalidate with ``md <key> I`` (mark stale, don't delete): readers keep getting the old
  value flagged X while the one client that got W recomputes.

Each strategy is a function ``(mc, key, recompute) -> (value, served_stale)``; :func:`run_herd` measures
DB queries per invalidation, peak DB queries/s, client p50/p99 and stale reads served.

The parts live in their own modules (``herd_strategies``: the strategies; ``herd_run``: the measurement;
``herd_exercise``: the learner's check); this module keeps the notebook level (tables, plots, claims) and
re-exports the rest, so ``thundering_herd.X`` works for all of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.lessons.herd_exercise import check_lease_get
from labkit.lessons.herd_run import HerdResult, Recompute, compare, protocol_demo, run_herd
from labkit.lessons.herd_strategies import (
    STRATEGIES,
    from_lease_get,
    lease,
    lease_ignoring_z,
    lock_with_add,
    no_protection,
    serve_stale,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "STRATEGIES",
    "HerdResult",
    "Recompute",
    "check_lease_get",
    "check_leases_cut_queries",
    "check_serve_stale_p99",
    "compare",
    "defaults",
    "from_lease_get",
    "hot_post",
    "lease",
    "lease_ignoring_z",
    "lock_with_add",
    "no_protection",
    "plot_results",
    "plot_timeline",
    "protocol_demo",
    "run_herd",
    "serve_stale",
    "table",
    "view",
]


# -------------------------------------------------------------------------------------------- exercise


# ------------------------------------------------------------------ notebook level: runs, plots, claims


def defaults() -> dict[str, Any]:
    """Parameters of the herd experiment for the current profile (LABKIT_PROFILE)."""
    from labkit import profile

    return {
        "readers": int(profile.pick(100, 50)),
        "invalidations": int(profile.pick(12, 6)),
        "interval": 0.6,
        "cost": 0.2,
        "think": 0.05,
    }


def hot_post(data: Any) -> int:
    """The celebrity's post: the most popular post of the dataset."""
    return int(data.popularity_rank[0])


def table(results: dict[str, HerdResult]) -> pd.DataFrame:
    """One row per strategy, rounded, with readable column names."""
    import pandas as pd

    df = pd.DataFrame([r.row() for r in results.values()]).set_index("strategy")
    df = df[
        [
            "readers",
            "invalidations",
            "db_queries",
            "db_queries_per_invalidation",
            "peak_db_queries_per_s",
            "p50_ms",
            "p99_ms",
            "refresh_p99_ms",
            "hit_p99_ms",
            "stale_reads",
            "reads",
        ]
    ]
    df.columns = [
        "readers",
        "invalidations",
        "DB queries",
        "DB queries / invalidation",
        "peak DB queries/s",
        "p50 (ms)",
        "p99 (ms)",
        "p99 during refresh (ms)",
        "p99 otherwise (ms)",
        "stale reads served",
        "reads",
    ]
    return df.round(
        {
            "DB queries / invalidation": 1,
            "peak DB queries/s": 0,
            "p50 (ms)": 2,
            "p99 (ms)": 1,
            "p99 during refresh (ms)": 1,
            "p99 otherwise (ms)": 1,
        }
    )


def plot_results(results: dict[str, HerdResult]) -> Any:
    """Left: DB queries per invalidation per strategy. Right: read latency p50/p99 per strategy."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    names = list(results)
    pos = np.arange(len(names))
    per = [results[n].db_queries_per_invalidation for n in names]
    ax1.bar(pos, per, color=[f"C{i}" for i in range(len(names))], alpha=0.85)
    for x, v in zip(pos, per):
        ax1.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=9)
    ax1.set_yscale("log")
    ax1.set_ylim(0.5, max(per) * 3)
    ax1.set_xticks(pos, names)
    ax1.set_ylabel("Postgres queries per invalidation (log)")
    ax1.set_title(f"{results[names[0]].readers} readers, one hot key", fontsize=10)
    ax1.grid(alpha=0.3, axis="y")
    first = results[names[0]]
    ax2.bar(pos - 0.2, [results[n].p(50) for n in names], 0.4, label="p50")
    ax2.bar(pos + 0.2, [results[n].p(99) for n in names], 0.4, label="p99")
    ax2.axhline(first.recompute_s * 1000, color="grey", ls="--", lw=0.8, label="recompute cost")
    ax2.set_yscale("log")
    ax2.set_xticks(pos, names)
    ax2.set_ylabel("read latency (ms, log)")
    ax2.legend(fontsize=8, loc="upper right")
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_timeline(results: dict[str, HerdResult], window: float = 0.1) -> Any:
    """Postgres queries/s over time, one row per strategy; dotted lines mark the invalidations."""
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(
        len(names), 1, figsize=(11, 1.3 * len(names) + 0.6), sharex=True, sharey=True, squeeze=False
    )
    for i, (ax, name) in enumerate(zip(axes[:, 0], names)):
        r = results[name]
        edges = np.arange(0, r.duration_s + window, window)
        counts, _ = np.histogram(r.query_times, bins=edges)
        ax.fill_between(edges[:-1], counts / window, step="post", color=f"C{i}", alpha=0.8)
        for t in r.invalidation_times:
            ax.axvline(t, color="grey", lw=0.7, ls=":")
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(f"Postgres queries/s ({window * 1000:.0f} ms bins); dotted lines: invalidations", fontsize=10)
    axes[-1, 0].set_xlabel("time since start (s)")
    fig.tight_layout()
    return fig


def view(results: dict[str, HerdResult]) -> list[Any]:
    """What the herd panel shows after each run: the table, the bars, the timeline."""
    return [table(results), plot_results(results), plot_timeline(results)]


def check_leases_cut_queries(none: HerdResult, leased: HerdResult, factor: float = 10.0, min_readers: int = 50) -> None:
    """Claim: with >= 50 concurrent readers, leases cut DB queries per invalidation by >= ``factor``."""
    from labkit.checkpoints import checkpoint

    ratio = none.db_queries_per_invalidation / max(leased.db_queries_per_invalidation, 1e-9)
    checkpoint(
        f"the herd has at least {min_readers} concurrent readers",
        min(none.readers, leased.readers),
        at_least=min_readers,
    )
    checkpoint(
        f"leases cut DB queries per invalidation by at least {factor:g}x",
        ratio,
        at_least=factor,
        context=f"{leased.strategy}: {leased.db_queries_per_invalidation:.1f} vs {none.strategy}: "
        f"{none.db_queries_per_invalidation:.1f} queries per invalidation, {leased.readers} readers",
    )


def check_serve_stale_p99(
    stale: HerdResult, none: HerdResult, fraction: float = 0.5, factor: float = 3.0, near: float = 3.0
) -> None:
    """Claims: under serve-stale, reads during a refresh are as fast as plain hits (within ``near``x, same
    run), p99 stays under ``fraction`` of the recompute time and ``factor``x below no protection's."""
    from labkit.checkpoints import checkpoint

    bound = fraction * stale.recompute_s * 1000
    during, otherwise = stale.refresh_p(99), stale.refresh_p(99, during=False)
    checkpoint(
        f"serve-stale: p99 while the value refreshes stays within {near:g}x of a plain hit's",
        during / max(otherwise, 1e-9),
        at_most=near,
        context=f"{stale.strategy}: p99 {during:.1f} ms during refreshes vs {otherwise:.1f} ms otherwise, "
        f"recompute {stale.recompute_s * 1000:.0f} ms, {stale.readers} readers",
    )
    checkpoint(
        f"serve-stale keeps p99 under {fraction:g}x the recompute time",
        stale.p(99),
        at_most=bound,
        context=f"{stale.strategy} p99 {stale.p(99):.1f} ms, recompute {stale.recompute_s * 1000:.0f} ms, "
        f"{stale.readers} readers",
    )
    checkpoint(
        f"serve-stale p99 is at least {factor:g}x lower than without protection",
        none.p(99) / max(stale.p(99), 1e-9),
        at_least=factor,
        context=f"{none.strategy} p99 {none.p(99):.1f} ms vs {stale.strategy} p99 {stale.p(99):.1f} ms",
    )
    checkpoint(
        "serve-stale also needs about one DB query per invalidation",
        stale.db_queries_per_invalidation,
        at_most=2.0,
        context=f"{stale.db_queries} queries over {stale.invalidations} invalidations",
    )
