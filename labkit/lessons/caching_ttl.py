"""Lesson 09's expiry part: reads paced at a rate through cards set with a TTL, the expiry model
(lambda*T/(1+lambda*T)) they are checked against, and the TTL sweep's table, plot and claim.
Re-exported by ``labkit.lessons.caching``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.datasets import instagram
from labkit.datasets.post_store import PostStore
from labkit.errors import BadParameter
from labkit.lessons.caching_experiments import _mc_counters, defaults, items_per_mb, read_through, sized_cache
from labkit.memcache_meta import MetaClient

if TYPE_CHECKING:
    import pandas as pd


def ttl_hit_ratio(probabilities: np.ndarray, rate: float, ttl: int) -> float:
    """Model of a cache that only expires (no eviction) under independent requests at ``rate`` reads/s.

    A card is set on a miss and lives L seconds; the reads of it within L are hits, so one cycle has
    one miss and on average lambda_i*E[L] hits: hit ratio_i = lambda_i E[L] / (1 + lambda_i E[L]), with
    lambda_i = rate * p_i. memcached's clock ticks once a second and an item dies at a tick, so a TTL of T
    gives L = T - phi, phi being how far past a tick the card was set. The set follows a miss that came
    an Exp(lambda_i) wait after the previous expiry (at a tick), so phi = frac(Exp(lambda_i)), whose mean
    is 1/lambda - 1/(e^lambda - 1): a hot card lives almost the full T, a cold one T - 1/2 on average.
    """
    p = np.asarray(probabilities, dtype=float)
    lam = rate * p
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        phase = np.where(lam < 1e-3, 0.5 - lam / 12, 1 / lam - 1 / np.expm1(np.minimum(lam, 700)))
    life = ttl - phase
    return float(np.sum(p * lam * life / (1 + lam * life)))


def ttl_run(
    mc_address: Any,
    store: PostStore,
    data: instagram.InstagramData,
    *,
    ttl: int,
    rate: float,
    seconds: float,
    warmup_s: float | None = None,
    skew: float = 1.0,
    seed: int = 5,
    read: Callable[[MetaClient, PostStore, int, int], bytes] | None = None,
) -> dict[str, Any]:
    """Reads paced at ``rate``/s through cache-aside with cards set for ``ttl`` seconds.

    Use a memcached big enough to hold every post, so that expiry, not eviction, decides the misses.
    The model uses the read rate actually achieved. ``read`` replaces the cache-aside read (tests).
    """
    read = read or read_through
    if ttl < 1 or rate <= 0 or seconds <= 0:
        raise BadParameter(f"need ttl >= 1 s, rate > 0 and seconds > 0 (got ttl={ttl}, rate={rate}, seconds={seconds})")
    warmup_s = ttl + 1.0 if warmup_s is None else warmup_s
    n_keys = len(data.posts)
    total = int(rate * (warmup_s + seconds) * 1.2) + 10
    ids = data.popularity_rank[instagram.zipf_trace(n_keys, skew, total, seed=seed)].tolist()
    with MetaClient(mc_address) as mc:
        mc.flush_all()
        time.sleep(1.05)  # see hit_ratio_run
        t0 = time.perf_counter()
        i, q0, t_measure, i_measure = 0, 0, 0.0, 0
        before: dict[str, int] | None = None
        while True:
            now = time.perf_counter()
            if before is None and now - t0 >= warmup_s:
                before, q0, t_measure, i_measure = _mc_counters(mc), store.queries, now, i
            if now - t0 >= warmup_s + seconds or i >= len(ids):
                break
            due = t0 + i / rate
            if due > now:
                time.sleep(due - now)
            read(mc, store, ids[i], ttl)
            i += 1
        elapsed = time.perf_counter() - t_measure
        after = _mc_counters(mc)
    if before is None:  # the trace is sized for warm-up + measurement, so this means a bad pacing bug
        raise BadParameter(f"the read trace ran out during the {warmup_s:g} s warm-up: raise rate or seconds")
    hits = after["get_hits"] - before["get_hits"]
    misses = after["get_misses"] - before["get_misses"]
    achieved = (i - i_measure) / elapsed
    return {
        "ttl_s": ttl,
        "skew": skew,
        "target_rate": rate,
        "reads_per_s": achieved,
        "reads": hits + misses,
        "hit_ratio": hits / max(1, hits + misses),
        "db_queries": store.queries - q0,
        "evictions": after["evictions"] - before["evictions"],
        "ttl_model": ttl_hit_ratio(instagram.zipf_probabilities(n_keys, skew), achieved, ttl),
    }


def ttl_sweep(
    st: Any,
    data: instagram.InstagramData,
    ttls: list[int] | None = None,
    rate: float | None = None,
    seconds: float | None = None,
    skew: float = 1.0,
    progress: Callable[..., None] | None = None,
) -> pd.DataFrame:
    """Hit ratio vs TTL at a fixed read rate (``rate`` reads/s, each TTL measured for ``seconds``),
    on a memcached that holds every post (no evictions)."""
    import pandas as pd

    d = defaults()
    big_mb = int(len(data.posts) / items_per_mb()) + 4
    ttls = ttls or d["ttls"]
    rows = []
    with sized_cache(st, big_mb) as addr, PostStore(st.endpoint("postgres").dsn) as store:
        for i, t in enumerate(ttls):
            rows.append(
                ttl_run(
                    addr, store, data, ttl=t, rate=rate or d["ttl_rate"], seconds=seconds or d["ttl_seconds"], skew=skew
                )
            )
            if progress is not None:
                progress((i + 1) / len(ttls), f"TTL {t} s done")
    return pd.DataFrame(rows)


def plot_ttl(df: pd.DataFrame) -> Any:
    """Measured hit ratio vs TTL over the expiry model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(df["ttl_s"], df["ttl_model"], "-", color="C0", label="expiry model at the measured read rate")
    ax.plot(df["ttl_s"], df["hit_ratio"], "o", color="C1", label="measured on memcached")
    ax.set_xlabel("TTL of a cached card (s)")
    ax.set_ylabel("hit ratio")
    ax.set_ylim(0, 1)
    ax.set_title(f"{df['reads_per_s'].mean():.0f} reads/s, Zipf s={df['skew'].iloc[0]:g}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


TTL_COLUMNS = {
    "ttl_s": "TTL (s)",
    "target_rate": "target reads/s",
    "reads_per_s": "reads/s achieved",
    "reads": "reads measured",
    "hit_ratio": "hit ratio (memcached)",
    "ttl_model": "expiry model",
    "db_queries": "DB queries",
}


def ttl_table(df: pd.DataFrame) -> pd.DataFrame:
    """The TTL sweep's figures, rounded, with readable column names."""
    return (
        df[list(TTL_COLUMNS)]
        .rename(columns=TTL_COLUMNS)
        .round({"reads/s achieved": 0, "hit ratio (memcached)": 3, "expiry model": 3})
    )


def view_ttl(df: pd.DataFrame) -> list[Any]:
    """What the TTL panel shows after each run: the table, then the plot."""
    return [ttl_table(df), plot_ttl(df)]


def check_ttl_model(df: pd.DataFrame, tol: float = 0.08) -> None:
    """Claim: with expiry alone, the hit ratio follows lambda*T/(1+lambda*T) within ``tol`` at every TTL."""
    from labkit.checkpoints import checkpoint

    df = df.reset_index(drop=True)
    gap = (df["hit_ratio"] - df["ttl_model"]).abs()
    r = df.iloc[int(gap.to_numpy().argmax())]  # the index is 0..n-1 (reset above)
    checkpoint(
        f"hit ratio vs TTL within {tol} of the expiry model",
        float(gap.max()),
        at_most=tol,
        context=f"worst at TTL {r['ttl_s']:g} s, {r['reads_per_s']:.0f} reads/s: measured {r['hit_ratio']:.3f} "
        f"vs model {r['ttl_model']:.3f}",
    )
