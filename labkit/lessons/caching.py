"""Lesson 09 — caching: cache-aside memcached in front of Postgres.

The domain: Instagram-like posts in Postgres (``labkit.datasets.instagram``). Rendering a post card
(the post, its author, its like count, its latest likers) is a real query; the card is cached in
memcached under ``post:<id>``. Reads go cache -> on a miss Postgres -> set; writes update Postgres and
then delete the key (cache-aside, as Instagram and Facebook ran it).

Experiments, all on the real servers:
- :func:`hit_ratio_run`: a Zipf read trace through a memcached of a given memory size; hit ratio as
  memcached counts it, DB queries as Postgres served them, and the two models of the same trace
  (Che's approximation and an exact LRU simulation).
- :func:`latency_compare`: per-read latency with and without the cache.
- :func:`stale_set_race`: two clients interleaved so that a delete lands between a miss's DB read and
  its set; reproduced with plain get/set, prevented with a meta-protocol lease (``mg N`` + ``ms C``).

The parts live in their own modules (``labkit.datasets.post_store``: the post cards and PostStore both cache
lessons use; ``caching_experiments``: the hit-ratio and latency runs and their models; ``caching_ttl``: expiry;
``caching_race``: the stale-set race; ``caching_exercise``: the learner's check). This module keeps the
notebook-level sweeps, tables, plots and claims, and re-exports the rest: ``caching.X`` works for all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.datasets import instagram
from labkit.datasets.post_store import CARD_BYTES, PostStore, decode_card, post_key, prepare, render_card
from labkit.errors import BadParameter
from labkit.lessons.caching_exercise import check_cache_aside
from labkit.lessons.caching_experiments import (
    che_hit_ratio,
    defaults,
    fillable_sizes_mb,
    hit_ratio_run,
    items_per_mb,
    latency_compare,
    lru_hit_ratio,
    read_through,
    sized_cache,
)
from labkit.lessons.caching_race import RaceOutcome, check_race, race_table, stale_set_race
from labkit.lessons.caching_ttl import check_ttl_model, plot_ttl, ttl_hit_ratio, ttl_run, ttl_sweep, ttl_table, view_ttl

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CARD_BYTES",
    "PostStore",
    "RaceOutcome",
    "che_hit_ratio",
    "check_cache_aside",
    "check_db_follows_hit_ratio",
    "check_latency",
    "check_model_matches",
    "check_race",
    "check_small_cache_serves_most",
    "check_ttl_model",
    "decode_card",
    "defaults",
    "fillable_sizes_mb",
    "hit_ratio_run",
    "items_per_mb",
    "latency_compare",
    "latency_table",
    "lru_hit_ratio",
    "plot_latency",
    "plot_sweep",
    "plot_ttl",
    "post_key",
    "prepare",
    "render_card",
    "race_table",
    "read_through",
    "size_sweep",
    "sized_cache",
    "skew_sweep",
    "stale_set_race",
    "table",
    "ttl_hit_ratio",
    "ttl_run",
    "ttl_sweep",
    "ttl_table",
    "view_sweep",
    "view_ttl",
]


# ---------------------------------------------------------------------------------------------- models


# ------------------------------------------------------------------------------------------ experiments


# --------------------------------------------------------------------------------------- stale-set race


# -------------------------------------------------------------------------------------------- exercise


# ------------------------------------------------------------------ notebook level: sweeps, plots, claims


def skew_sweep(
    st: Any,
    data: instagram.InstagramData,
    skews: list[float] | None = None,
    memory_mb: int | None = None,
    reads: int | None = None,
    warmup: int | None = None,
    progress: Callable[..., None] | None = None,
) -> pd.DataFrame:
    """Hit ratio and DB load vs Zipf skew, on one memcached of ``memory_mb`` MB.
    ``progress(fraction, text)`` is called after each point (the panel's progress bar)."""
    import pandas as pd

    d = defaults()
    rows = []
    skews = skews or d["skews"]
    with sized_cache(st, memory_mb or d["small_mb"]) as addr, PostStore(st.endpoint("postgres").dsn) as store:
        for i, s in enumerate(skews):
            rows.append(
                hit_ratio_run(
                    addr,
                    store,
                    data,
                    skew=s,
                    reads=reads or d["reads"],
                    warmup=warmup if warmup is not None else d["warmup"],
                )
            )
            if progress is not None:
                progress((i + 1) / len(skews), f"s={s:g} done")
    return pd.DataFrame(rows)


def size_sweep(
    st: Any,
    data: instagram.InstagramData,
    sizes_mb: list[int] | None = None,
    skew: float | None = None,
    reads: int | None = None,
    warmup: int | None = None,
    progress: Callable[..., None] | None = None,
) -> pd.DataFrame:
    """Hit ratio and DB load vs memcached memory size, at one Zipf skew.

    Without ``sizes_mb`` the sizes run up to the largest cache this trace can fill
    (:func:`fillable_sizes_mb`), so every point is a different cache, not a repeat.
    """
    import pandas as pd

    d = defaults()
    skew = skew if skew is not None else d["size_skew"]
    reads = reads or d["reads"]
    warmup = warmup if warmup is not None else d["warmup"]
    sizes_mb = sizes_mb or fillable_sizes_mb(len(data.posts), skew, reads + warmup, d["small_mb"])
    rows = []
    with PostStore(st.endpoint("postgres").dsn) as store:
        for i, mb in enumerate(sizes_mb):
            with sized_cache(st, mb) as addr:
                rows.append(hit_ratio_run(addr, store, data, skew=skew, reads=reads, warmup=warmup))
            if progress is not None:
                progress((i + 1) / len(sizes_mb), f"{mb} MB done")
    return pd.DataFrame(rows)


TABLE_COLUMNS = {
    "skew": "Zipf s",
    "cache_mb": "cache MB",
    "cached_cards": "cards cached",
    "cache_fraction": "share of posts cached",
    "hit_ratio": "hit ratio (memcached)",
    "che_model": "Che model",
    "lru_simulation": "LRU simulation",
    "reads": "reads",
    "db_queries": "DB queries",
    "db_queries_per_s": "DB queries/s",
}


def table(df: pd.DataFrame) -> pd.DataFrame:
    """The sweep's measured figures, rounded, with readable column names."""
    out = df[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS)
    return out.round(
        {
            "share of posts cached": 3,
            "hit ratio (memcached)": 3,
            "Che model": 3,
            "LRU simulation": 3,
            "DB queries/s": 0,
            "cache MB": 1,
        }
    )


def plot_sweep(df: pd.DataFrame, x: str, data: instagram.InstagramData | None = None) -> Any:
    """Measured hit ratio (points) over the Che model (line) and DB queries per 1000 reads, vs ``x``.

    ``x`` is "skew" or "cache_fraction". With ``x="skew"`` and ``data`` the model is drawn as a smooth
    curve at the sweep's capacity.
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    label = {"skew": "Zipf skew s", "cache_fraction": "cache size (share of all posts cached)"}[x]
    if x == "skew" and data is not None:
        cap = float(df["cached_cards"].median())
        xs = np.linspace(min(df[x]) - 0.05, max(df[x]) + 0.05, 40)
        ax1.plot(
            xs,
            [che_hit_ratio(instagram.zipf_probabilities(len(data.posts), s), cap) for s in xs],
            color="C0",
            label=f"Che model (LRU, {cap:.0f} cards)",
        )
    else:
        ax1.plot(df[x], df["che_model"], color="C0", label="Che model (LRU)")
    ax1.plot(df[x], df["lru_simulation"], "x", color="C2", label="exact LRU simulation")
    ax1.plot(df[x], df["hit_ratio"], "o", color="C1", label="measured on memcached")
    ax1.set_xlabel(label)
    ax1.set_ylabel("hit ratio")
    ax1.set_ylim(0, 1)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")
    ax2.bar(range(len(df)), 1000 * df["db_queries"] / df["reads"], color="C3", alpha=0.8)
    ax2.plot(range(len(df)), 1000 * (1 - df["hit_ratio"]), "k_", markersize=20, label="1000 × (1 − hit ratio)")
    ax2.set_xticks(range(len(df)), [f"{v:.1%}" if x == "cache_fraction" else f"{v:g}" for v in df[x]])
    ax2.set_xlabel(label)
    ax2.set_ylabel("Postgres queries per 1000 reads")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_latency(lat: dict[str, dict[str, float]]) -> Any:
    """p50 and p99 per path, in milliseconds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3))
    names = list(lat)
    pos = np.arange(len(names))
    ax.barh(pos - 0.2, [lat[n]["p50_ms"] for n in names], 0.4, label="p50")
    ax.barh(pos + 0.2, [lat[n]["p99_ms"] for n in names], 0.4, label="p99")
    ax.set_yticks(pos, names)
    ax.set_xlabel("latency per read (ms)")
    ax.legend()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def check_db_follows_hit_ratio(df: pd.DataFrame, rel_tol: float = 0.05) -> None:
    """Claim: Postgres queries = reads × (1 − hit ratio), at every point of a sweep."""
    from labkit.checkpoints import checkpoint

    def relative_miss(r: Any) -> float:  # a row of df.itertuples()
        expected = float(r.reads * (1 - r.hit_ratio))
        return abs(float(r.db_queries) - expected) / max(1.0, expected)

    worst: Any = max(df.itertuples(), key=relative_miss)  # a namedtuple of the sweep's columns
    checkpoint(
        "DB queries fall as the hit ratio predicts: queries = reads x (1 - hit ratio)",
        worst.db_queries,
        within=(worst.reads * (1 - worst.hit_ratio), rel_tol),
        context=f"s={worst.skew}, {worst.cache_mb:.0f} MB cache, hit ratio {worst.hit_ratio:.3f}, {worst.reads} reads",
    )


def check_small_cache_serves_most(
    df: pd.DataFrame, skew: float = 1.1, share: float = 0.10, at_least: float = 0.5
) -> None:
    """Claim: at high skew, a cache holding at most ``share`` of the posts serves most reads."""
    from labkit.checkpoints import checkpoint

    rows = df.reset_index(drop=True)[np.isclose(df["skew"].to_numpy(), skew)]
    if rows.empty:
        raise BadParameter(f"the sweep has no point at s={skew}: include it in skews")
    r = rows.iloc[0]
    checkpoint(
        f"the small cache holds at most {share:.0%} of the posts",
        r["cache_fraction"],
        at_most=share + 0.005,
        context=f"{r['cached_cards']} of {r['keys']} cards in {r['cache_mb']:.0f} MB",
    )
    checkpoint(
        f"at s={skew} a cache of {share:.0%} of the posts serves most reads",
        r["hit_ratio"],
        at_least=at_least,
        context=f"zipf s={skew}, {r['cache_fraction']:.1%} of posts cached",
    )


def check_model_matches(df: pd.DataFrame, tol: float = 0.08) -> None:
    """Claim: the measured hit ratio is within ``tol`` (absolute) of Che's model at every point."""
    from labkit.checkpoints import checkpoint

    df = df.reset_index(drop=True)  # sweeps concatenated with pd.concat repeat index labels
    gap = (df["hit_ratio"] - df["che_model"]).abs()
    r = df.iloc[int(gap.to_numpy().argmax())]  # the index is 0..n-1 (reset above)
    checkpoint(
        f"measured hit ratio within {tol} of the Che model at every point",
        float(gap.max()),
        at_most=tol,
        context=f"worst at s={r['skew']}, {r['cache_fraction']:.1%} cached: measured "
        f"{r['hit_ratio']:.3f} vs model {r['che_model']:.3f}",
    )


def check_latency(lat: dict[str, dict[str, float]], factor: float = 1.5) -> None:
    """Claim: a cache hit's median latency is at least ``factor``x lower than a Postgres read's."""
    from labkit.checkpoints import checkpoint

    hit, db = lat["cache hit"]["p50_ms"], lat["postgres only"]["p50_ms"]
    checkpoint(
        f"a cache hit is at least {factor:g}x faster than a Postgres read (median)",
        db / hit,
        at_least=factor,
        context=f"p50 {hit:.3f} ms (hit) vs {db:.3f} ms (Postgres)",
    )


def view_sweep(df: pd.DataFrame, x: str, data: instagram.InstagramData | None = None) -> list[Any]:
    """What a sweep panel shows after each run: the table, then the plot."""
    return [table(df), plot_sweep(df, x=x, data=data)]


def latency_table(lat: dict[str, dict[str, float]]) -> pd.DataFrame:
    """:func:`latency_compare`'s result as a rounded table."""
    import pandas as pd

    df = pd.DataFrame(lat).T
    df["reads"] = df["reads"].astype(int)
    return df.round(3).rename(columns={"p50_ms": "p50 (ms)", "p99_ms": "p99 (ms)", "mean_ms": "mean (ms)"})
