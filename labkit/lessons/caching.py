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
"""
from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import psycopg

from labkit.datasets import instagram
from labkit.errors import BadParameter
from labkit.memcache_meta import MetaClient

__all__ = [
    "CARD_BYTES", "post_key", "decode_card", "PostStore", "prepare", "che_hit_ratio", "lru_hit_ratio",
    "hit_ratio_run", "latency_compare", "stale_set_race", "RaceOutcome", "items_per_mb",
]

# A rendered post card (caption, author, counts, latest likers, markup) is a few KB. The size matters
# for the lesson: it sets how many posts a memcached of N MB holds (about 200 per MB here).
CARD_BYTES = 4000
LEASE_TTL = 30  # seconds a lease (the empty item mg N creates) lives if its winner never sets


def post_key(post_id: int) -> str:
    """The memcached key of a post's card."""
    return f"post:{int(post_id)}"


def decode_card(card: bytes) -> dict[str, Any]:
    """The JSON fields of a cached card (the padding is dropped)."""
    return json.loads(card.rstrip(b" "))


_RENDER_SQL = """
SELECT p.id, p.caption, p.like_count, p.version, u.username,
       ARRAY(SELECT lu.username FROM likes l JOIN users lu ON lu.id = l.user_id
             WHERE l.post_id = p.id ORDER BY l.user_id DESC LIMIT 20)
FROM posts p JOIN users u ON u.id = p.user_id WHERE p.id = %s
"""


class PostStore:
    """Posts in Postgres, with a count of the queries that actually reached Postgres.

    One connection per store (a store is one client's connection; give each thread its own).
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.queries = 0  # render() calls that ran a query on Postgres

    def render(self, post_id: int) -> bytes:
        """Run the post-card query and return the card as bytes, padded to CARD_BYTES."""
        self.queries += 1
        row = self.conn.execute(_RENDER_SQL, (int(post_id),)).fetchone()
        if row is None:
            raise BadParameter(f"post {post_id} does not exist: pick an id from the loaded dataset")
        pid, caption, likes, version, author, likers = row
        card = json.dumps({"id": pid, "author": author, "caption": caption, "likes": likes,
                           "version": version, "likers": likers}).encode()
        return card.ljust(CARD_BYTES)

    def like(self, post_id: int, user_id: int) -> int:
        """A user likes a post: one transaction; returns the post's new version."""
        with self.conn.transaction():
            self.conn.execute("INSERT INTO likes (post_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                              (int(post_id), int(user_id)))
            row = self.conn.execute("UPDATE posts SET like_count = like_count + 1, version = version + 1 "
                                    "WHERE id = %s RETURNING version", (int(post_id),)).fetchone()
        if row is None:
            raise BadParameter(f"post {post_id} does not exist: pick an id from the loaded dataset")
        return int(row[0])

    def version(self, post_id: int) -> int:
        """The post's current version in Postgres (not counted as a read query)."""
        return int(self.conn.execute("SELECT version FROM posts WHERE id = %s", (int(post_id),)).fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "PostStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare(dsn: str, profile: str | None = None, seed: int = 2010) -> instagram.InstagramData:
    """Generate the dataset and load it into Postgres (reused when the same one is already loaded)."""
    data = instagram.generate(profile, seed=seed)
    tag = json.dumps({"seed": seed, **{k: v for k, v in data.summary().items() if k != "likes on top 1% of posts"}})
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS labkit_datasets (name text PRIMARY KEY, tag text NOT NULL)")
        row = conn.execute("SELECT tag FROM labkit_datasets WHERE name = 'instagram'").fetchone()
        if row is None or row[0] != tag:
            instagram.load_postgres(conn, data)
            conn.execute("INSERT INTO labkit_datasets VALUES ('instagram', %s) "
                         "ON CONFLICT (name) DO UPDATE SET tag = excluded.tag", (tag,))
        conn.commit()
    return data


# ---------------------------------------------------------------------------------------------- models

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


def hit_ratio_run(mc_address: Any, store: PostStore, data: instagram.InstagramData, *, skew: float,
                  reads: int, warmup: int, seed: int = 9, ttl: int = 0) -> dict[str, Any]:
    """Replay a Zipf(``skew``) read trace through cache-aside on a real memcached and Postgres.

    The cache is flushed first, warmed with ``warmup`` reads, then ``reads`` reads are measured.
    Hit ratio comes from memcached's own counters (get_hits/get_misses); DB queries are the render
    queries that reached Postgres. The memcached's memory size is whatever it was started with: its
    capacity in cards is read back from its stats (curr_items once full).
    """
    if reads < 1 or warmup < 0:
        raise BadParameter(f"reads={reads} must be >= 1 and warmup={warmup} >= 0")
    n_keys = len(data.posts)
    trace = instagram.zipf_trace(n_keys, skew, warmup + reads, seed=seed)
    ids = data.popularity_rank[trace]
    with MetaClient(mc_address) as mc:
        mc.flush_all()
        time.sleep(1.05)  # flush_all marks items invalid as of "now" (1 s clock): let the clock tick
        for pid in ids[:warmup].tolist():
            _read_through(mc, store, pid, ttl)
        before, q0, t0 = _mc_counters(mc), store.queries, time.perf_counter()
        for pid in ids[warmup:].tolist():
            _read_through(mc, store, pid, ttl)
        elapsed = time.perf_counter() - t0
        after = _mc_counters(mc)
    hits = after["get_hits"] - before["get_hits"]
    misses = after["get_misses"] - before["get_misses"]
    capacity = after["curr_items"]
    probs = instagram.zipf_probabilities(n_keys, skew)
    return {
        "skew": skew, "cache_mb": after["limit_maxbytes"] / 2**20, "cached_cards": capacity,
        "cache_fraction": capacity / n_keys, "keys": n_keys, "reads": reads, "hits": hits, "misses": misses,
        "hit_ratio": hits / max(1, hits + misses), "db_queries": store.queries - q0,
        "db_queries_per_s": (store.queries - q0) / elapsed, "reads_per_s": reads / elapsed,
        "evictions": after["evictions"] - before["evictions"],
        "che_model": che_hit_ratio(probs, capacity),
        "lru_simulation": lru_hit_ratio(trace, max(1, capacity), warmup),
    }


def _read_through(mc: MetaClient, store: PostStore, post_id: int, ttl: int) -> bytes:
    """The cache-aside read of the experiments (kept minimal: it is the inner loop)."""
    key = post_key(post_id)
    r = mc.get(key)
    if r.hit:
        return r.value
    card = store.render(post_id)
    mc.set(key, card, ttl=ttl)
    return card


def latency_compare(mc_address: Any, store: PostStore, data: instagram.InstagramData, *, skew: float = 1.0,
                    reads: int = 2000, seed: int = 11) -> dict[str, dict[str, float]]:
    """Per-read latency (ms) of the same trace straight from Postgres and through a warm cache.

    Returns {"postgres only": {...}, "cache-aside (warm)": {...}, "cache hit": {...}} with p50/p99/mean.
    """
    trace = data.popularity_rank[instagram.zipf_trace(len(data.posts), skew, reads, seed=seed)].tolist()
    direct = np.empty(len(trace))
    for i, pid in enumerate(trace):
        t = time.perf_counter()
        store.render(pid)
        direct[i] = time.perf_counter() - t
    cached, hit_flags = np.empty(len(trace)), np.zeros(len(trace), dtype=bool)
    with MetaClient(mc_address) as mc:
        for pid in trace:  # warm the cache with the same trace first
            _read_through(mc, store, pid, 0)
        for i, pid in enumerate(trace):
            t = time.perf_counter()
            r = mc.get(post_key(pid))
            if not r.hit:
                mc.set(post_key(pid), store.render(pid))
            cached[i] = time.perf_counter() - t
            hit_flags[i] = r.hit

    def stats(x: np.ndarray) -> dict[str, float]:
        x = x * 1000
        return {"reads": len(x), "p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99)),
                "mean_ms": float(x.mean())}

    return {"postgres only": stats(direct), "cache-aside (warm)": stats(cached),
            "cache hit": stats(cached[hit_flags]) if hit_flags.any() else stats(cached)}


# --------------------------------------------------------------------------------------- stale-set race

@dataclass
class RaceOutcome:
    """One interleaving of a reader and a writer on one post."""

    fixed: bool
    reader_saw_version: int      # the version the reader read from Postgres on its miss
    db_version: int              # the version in Postgres after the writer committed
    set_status: str              # memcached's answer to the reader's (late) set
    cached_version: int | None   # what the cache holds at the end (None: nothing cached)

    @property
    def stale(self) -> bool:
        """The cache holds an older version than Postgres: every later reader gets stale data."""
        return self.cached_version is not None and self.cached_version < self.db_version


def _race_once(mc_address: Any, dsn: str, post_id: int, user_id: int, fixed: bool) -> RaceOutcome:
    key = post_key(post_id)
    read_done, write_done = threading.Event(), threading.Event()
    box: dict[str, Any] = {}
    errors: list[BaseException] = []

    def reader() -> None:  # client A: a cache miss that reads Postgres, then stalls before its set
        try:
            with MetaClient(mc_address) as mc, PostStore(dsn) as db:
                r = mc.get(key, vivify=LEASE_TTL) if fixed else mc.get(key)
                assert not r.hit, "the race starts from a miss"
                card = db.render(post_id)
                box["read_version"] = decode_card(card)["version"]
                read_done.set()
                if not write_done.wait(10):
                    raise TimeoutError("writer did not finish")
                # the fix: set only if our lease (the item mg N created, with its CAS) is still there
                res = mc.set(key, card, cas=r.cas) if fixed else mc.set(key, card)
                box["set_status"] = res.status
        except BaseException as e:  # surfaced in the caller's thread
            errors.append(e)
            read_done.set()

    def writer() -> None:  # client B: update Postgres, then invalidate, while A is stalled
        try:
            with MetaClient(mc_address) as mc, PostStore(dsn) as db:
                if not read_done.wait(10):
                    raise TimeoutError("reader did not read")
                box["db_version"] = db.like(post_id, user_id)
                mc.delete(key)
        except BaseException as e:
            errors.append(e)
        finally:
            write_done.set()

    with MetaClient(mc_address) as mc:
        mc.delete(key)
    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    with MetaClient(mc_address) as mc:
        r = mc.get(key)
    cached = decode_card(r.value)["version"] if r.hit and r.value else None
    return RaceOutcome(fixed, box["read_version"], box["db_version"], box["set_status"], cached)


def stale_set_race(mc_address: Any, dsn: str, data: instagram.InstagramData, *, fixed: bool,
                   trials: int = 5) -> list[RaceOutcome]:
    """Reproduce the stale-set race ``trials`` times (on different posts) with or without the lease fix.

    The interleaving is forced with events, so the outcome does not depend on timing: A misses and
    reads version v from Postgres; B commits v+1 and deletes the key; only then does A set its card.
    Without the fix memcached now holds v forever (until TTL/eviction). With the fix A's set carries the
    CAS of the lease it got with ``mg ... N``; B's delete removed that lease, so memcached answers NF
    and A's stale card is never stored.
    """
    if trials < 1:
        raise BadParameter(f"trials={trials}: use 1 or more")
    n_users = len(data.users)
    out = []
    for i in range(trials):
        post_id = int(data.popularity_rank[i % len(data.posts)])
        out.append(_race_once(mc_address, dsn, post_id, user_id=1 + (7919 * (i + 1 + int(fixed) * 131)) % n_users,
                              fixed=fixed))
    return out
