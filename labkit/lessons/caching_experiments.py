"""Lesson 09's measurements on the real servers: hit ratio and latency runs, and the models the hit ratio is
compared with (Che's approximation, an exact LRU simulation). Re-exported by ``labkit.lessons.caching``.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from labkit.datasets import instagram
from labkit.datasets.post_store import PostStore, post_key
from labkit.errors import BadParameter
from labkit.memcache_meta import MetaClient


def che_hit_ratio(probabilities: np.ndarray, capacity: float) -> float:
    """Che's approximation of an LRU cache's hit ratio under independent requests.

    Find the characteristic time T where the expected number of distinct keys requested within T
    equals the capacity, sum_i (1 - exp(-p_i T)) = C; then hit ratio = sum_i p_i (1 - exp(-p_i T)).
    (Che, Tung, Wang 2002; Fricker, Robert, Roberts 2012 on why it is so accurate.)
    """
    p = np.asarray(probabilities, dtype=float)
    if capacity <= 0:
        return 0.0
    if capacity >= len(p):
        return 1.0
    lo, hi = 0.0, 1.0
    while np.sum(1 - np.exp(-p * hi)) < capacity:
        hi *= 2
    for _ in range(100):  # bisection: the left side grows monotonically with T
        mid = (lo + hi) / 2
        if np.sum(1 - np.exp(-p * mid)) < capacity:
            lo = mid
        else:
            hi = mid
    return float(np.sum(p * (1 - np.exp(-p * hi))))


def lru_hit_ratio(trace: np.ndarray, capacity: int, warmup: int = 0) -> float:
    """Exact LRU simulation of a trace: hit ratio over the requests after ``warmup``."""
    cache: collections.OrderedDict[int, None] = collections.OrderedDict()
    hits = 0
    for i, key in enumerate(trace.tolist()):
        if key in cache:
            cache.move_to_end(key)
            if i >= warmup:
                hits += 1
        else:
            cache[key] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    measured = len(trace) - warmup
    return hits / measured if measured > 0 else float("nan")


# ------------------------------------------------------------------------------------------ experiments


def _mc_counters(mc: MetaClient) -> dict[str, int]:
    s = mc.stats()
    return {k: int(s[k]) for k in ("get_hits", "get_misses", "curr_items", "evictions", "limit_maxbytes")}


def items_per_mb() -> float:
    """About how many post cards one MB of memcached holds (a slab page holds 1 MB of ~4.5 KB chunks)."""
    return 1024 * 1024 / 4_720


def hit_ratio_run(
    mc_address: Any,
    store: PostStore,
    data: instagram.InstagramData,
    *,
    skew: float,
    reads: int,
    warmup: int,
    seed: int = 9,
    ttl: int = 0,
    read: Callable[[MetaClient, PostStore, int, int], bytes] | None = None,
) -> dict[str, Any]:
    """Replay a Zipf(``skew``) read trace through cache-aside on a real memcached and Postgres.

    The cache is flushed first, warmed with ``warmup`` reads, then ``reads`` reads are measured.
    Hit ratio comes from memcached's own counters (get_hits/get_misses); DB queries are the render
    queries that reached Postgres. The memcached's memory size is whatever it was started with: its
    capacity in cards is read back from its stats (curr_items once full). ``read(mc, store, post_id,
    ttl)`` replaces the lesson's cache-aside read (tests pass broken ones).
    """
    read = read or read_through
    if reads < 1 or warmup < 0:
        raise BadParameter(f"reads={reads} must be >= 1 and warmup={warmup} >= 0")
    n_keys = len(data.posts)
    trace = instagram.zipf_trace(n_keys, skew, warmup + reads, seed=seed)
    ids = data.popularity_rank[trace]
    with MetaClient(mc_address) as mc:
        mc.flush_all()
        time.sleep(1.05)  # flush_all marks items invalid as of "now" (1 s clock): let the clock tick
        for pid in ids[:warmup].tolist():
            read(mc, store, pid, ttl)
        before, q0, t0 = _mc_counters(mc), store.queries, time.perf_counter()
        for pid in ids[warmup:].tolist():
            read(mc, store, pid, ttl)
        elapsed = time.perf_counter() - t0
        after = _mc_counters(mc)
    hits = after["get_hits"] - before["get_hits"]
    misses = after["get_misses"] - before["get_misses"]
    capacity = after["curr_items"]
    probs = instagram.zipf_probabilities(n_keys, skew)
    return {
        "skew": skew,
        "cache_mb": after["limit_maxbytes"] / 2**20,
        "cached_cards": capacity,
        "cache_fraction": capacity / n_keys,
        "keys": n_keys,
        "reads": reads,
        "hits": hits,
        "misses": misses,
        "hit_ratio": hits / max(1, hits + misses),
        "db_queries": store.queries - q0,
        "db_queries_per_s": (store.queries - q0) / elapsed,
        "reads_per_s": reads / elapsed,
        "evictions": after["evictions"] - before["evictions"],
        "che_model": che_hit_ratio(probs, capacity),
        "lru_simulation": lru_hit_ratio(trace, max(1, capacity), warmup),
    }


def read_through(mc: MetaClient, store: PostStore, post_id: int, ttl: int) -> bytes:
    """The cache-aside read of the experiments (kept minimal: it is the inner loop)."""
    key = post_key(post_id)
    r = mc.get(key)
    if r.hit and r.value is not None:
        return r.value
    card = store.render(post_id)
    mc.set(key, card, ttl=ttl)
    return card


def latency_compare(
    mc_address: Any,
    store: PostStore,
    data: instagram.InstagramData,
    *,
    skew: float = 1.0,
    reads: int = 2000,
    seed: int = 11,
) -> dict[str, dict[str, float]]:
    """Per-read latency (ms) of the same Zipf trace straight from Postgres and through cache-aside.

    The cache-aside pass starts cold, so it has both kinds of reads; they are reported apart:
    {"postgres only": {...}, "cache hit": {...}, "cache miss (get + query + set)": {...}}, each with
    reads, p50_ms, p99_ms, mean_ms.
    """
    trace = data.popularity_rank[instagram.zipf_trace(len(data.posts), skew, reads, seed=seed)].tolist()
    direct = np.empty(len(trace))
    for i, pid in enumerate(trace):
        t = time.perf_counter()
        store.render(pid)
        direct[i] = time.perf_counter() - t
    through, hit = np.empty(len(trace)), np.zeros(len(trace), dtype=bool)
    with MetaClient(mc_address) as mc:
        for pid in set(trace):  # start cold for this trace's keys
            mc.delete(post_key(pid))
        for i, pid in enumerate(trace):
            t = time.perf_counter()
            r = mc.get(post_key(pid))
            if not r.hit:
                mc.set(post_key(pid), store.render(pid))
            through[i] = time.perf_counter() - t
            hit[i] = r.hit

    def stats(x: np.ndarray) -> dict[str, float]:
        x = x * 1000
        if len(x) == 0:
            return {"reads": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
        return {
            "reads": len(x),
            "p50_ms": float(np.percentile(x, 50)),
            "p99_ms": float(np.percentile(x, 99)),
            "mean_ms": float(x.mean()),
        }

    return {
        "postgres only": stats(direct),
        "cache hit": stats(through[hit]),
        "cache miss (get + query + set)": stats(through[~hit]),
    }


def defaults() -> dict[str, Any]:
    """Sizes and lengths of the experiments for the current profile (LABKIT_PROFILE)."""
    from labkit import profile

    p = profile.current()
    n_posts = instagram.SIZES[p][1]
    # the largest whole-MB memcached that holds at most 10% of the posts
    small_mb = max(2, int(0.10 * n_posts / items_per_mb()))
    return {
        "reads": int(profile.pick(40_000, 8_000)),
        "warmup": int(profile.pick(20_000, 4_000)),
        "skews": [0.6, 0.8, 1.0, 1.1, 1.2],
        "small_mb": small_mb,
        "sizes_mb": fillable_sizes_mb(
            n_posts, 1.0, int(profile.pick(40_000, 8_000)) + int(profile.pick(20_000, 4_000)), small_mb
        ),
        "size_skew": 1.0,
        "latency_reads": int(profile.pick(5_000, 1_500)),
        "race_trials": 5,
        "ttls": [1, 2, 4],
        "ttl_rate": 500.0,
        "ttl_seconds": float(profile.pick(8, 3)),
    }


def fillable_sizes_mb(
    n_keys: int, skew: float, trace_reads: int, smallest_mb: int, points: int = 5, fill: float = 0.8
) -> list[int]:
    """Cache sizes (MB) from ``smallest_mb`` up to one that holds ``fill`` of the posts the trace touches.

    A cache larger than the number of distinct posts in the trace never fills: it keeps every card
    it is given, so its row would repeat the one before. The expected number of distinct posts in
    ``trace_reads`` Zipf(``skew``) reads is sum_i 1 - (1 - p_i)^reads; sizes are spaced geometrically.
    """
    probs = instagram.zipf_probabilities(n_keys, skew)
    distinct = float(np.sum(-np.expm1(trace_reads * np.log1p(-np.minimum(probs, 1 - 1e-12)))))
    largest = max(smallest_mb, int(fill * distinct / items_per_mb()))
    return sorted({int(round(x)) for x in np.geomspace(smallest_mb, largest, points)})


@contextlib.contextmanager
def sized_cache(st: Any, memory_mb: int) -> Iterator[tuple[str, int]]:
    """A memcached of ``memory_mb`` MB added to the stack for one experiment, removed afterwards."""
    name = f"cache-{memory_mb}mb"
    # A cache of a chosen size, emptied by flush_all, can't be a server the class shares: on the external
    # provider this experiment runs on a private memcached started here (it needs the memcached binary).
    provider = "local" if getattr(st, "provider", None) == "external" else None
    # -I 1m: memcached refuses an item size limit above half its memory, and 1 MB pages keep
    # the capacity a smooth function of the memory size
    svc = st.add("memcached", name=name, memory_mb=int(memory_mb), max_item_mb=1, provider=provider)
    try:
        yield svc.endpoint.address
    finally:
        st.remove(name)
