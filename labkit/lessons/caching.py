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
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from labkit.datasets import instagram
from labkit.errors import BadParameter, CheckpointFailed
from labkit.memcache_meta import MetaClient
from labkit.services.postgres import fetch_value

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


def render_card(conn: psycopg.Connection, post_id: int) -> bytes:
    """Run the post-card query on ``conn`` and return the card as bytes, padded to CARD_BYTES."""
    row = conn.execute(_RENDER_SQL, (int(post_id),)).fetchone()
    if row is None:
        raise BadParameter(f"post {post_id} does not exist: pick an id from the loaded dataset")
    pid, caption, likes, version, author, likers = row
    card = json.dumps(
        {"id": pid, "author": author, "caption": caption, "likes": likes, "version": version, "likers": likers}
    ).encode()
    return card.ljust(CARD_BYTES)


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
        return render_card(self.conn, post_id)

    def like(self, post_id: int, user_id: int) -> int:
        """A user likes a post: one transaction; returns the post's new version."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO likes (post_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (int(post_id), int(user_id)),
            )
            row = self.conn.execute(
                "UPDATE posts SET like_count = like_count + 1, version = version + 1 WHERE id = %s RETURNING version",
                (int(post_id),),
            ).fetchone()
        if row is None:
            raise BadParameter(f"post {post_id} does not exist: pick an id from the loaded dataset")
        return int(row[0])

    def version(self, post_id: int) -> int:
        """The post's current version in Postgres (not counted as a read query)."""
        return int(fetch_value(self.conn, "SELECT version FROM posts WHERE id = %s", (int(post_id),)))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PostStore:
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
            conn.execute(
                "INSERT INTO labkit_datasets VALUES ('instagram', %s) "
                "ON CONFLICT (name) DO UPDATE SET tag = excluded.tag",
                (tag,),
            )
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
    read = read or _read_through
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


def _read_through(mc: MetaClient, store: PostStore, post_id: int, ttl: int) -> bytes:
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
    read = read or _read_through
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


# --------------------------------------------------------------------------------------- stale-set race


@dataclass
class RaceOutcome:
    """One interleaving of a reader and a writer on one post."""

    fixed: bool
    reader_saw_version: int  # the version the reader read from Postgres on its miss
    db_version: int  # the version in Postgres after the writer committed
    set_status: str  # memcached's answer to the reader's (late) set
    cached_version: int | None  # what the cache holds at the end (None: nothing cached)

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


def stale_set_race(
    mc_address: Any, dsn: str, data: instagram.InstagramData, *, fixed: bool, trials: int = 5
) -> list[RaceOutcome]:
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
        out.append(
            _race_once(mc_address, dsn, post_id, user_id=1 + (7919 * (i + 1 + int(fixed) * 131)) % n_users, fixed=fixed)
        )
    return out


# -------------------------------------------------------------------------------------------- exercise


def _expect(ok: object, what: str) -> None:  # any truthy value passes
    if not ok:
        raise CheckpointFailed(f"exercise: {what}")


def check_cache_aside(
    read_post: Callable[[MetaClient, PostStore, int], bytes],
    like_post: Callable[[MetaClient, PostStore, int, int], None],
    mc_address: Any,
    dsn: str,
    data: instagram.InstagramData,
) -> None:
    """Run the learner's ``read_post(mc, db, post_id)`` and ``like_post(mc, db, post_id, user_id)``
    against the real memcached and Postgres; print PASS or raise CheckpointFailed saying what was seen."""
    try:
        _check_cache_aside(read_post, like_post, mc_address, dsn, data)
    except NotImplementedError:
        print("Not attempted yet: write read_post and like_post in the cell above, then run this cell again.")


def _check_cache_aside(
    read_post: Callable[..., bytes],
    like_post: Callable[..., None],
    mc_address: Any,
    dsn: str,
    data: instagram.InstagramData,
) -> None:
    post_id = int(data.popularity_rank[len(data.posts) // 2])
    key = post_key(post_id)
    with MetaClient(mc_address) as mc, PostStore(dsn) as db, MetaClient(mc_address) as probe:
        probe.delete(key)
        fresh = decode_card(db.render(post_id))
        q0 = db.queries
        card = read_post(mc, db, post_id)
        _expect(
            isinstance(card, (bytes, bytearray)) and card,
            f"read_post({post_id}) returned {type(card).__name__} {str(card)[:60]!r}: return the card's bytes",
        )
        got = decode_card(bytes(card))
        _expect(
            got["id"] == post_id and got["version"] == fresh["version"],
            f"read_post({post_id}) on a cold cache returned post {got.get('id')} version {got.get('version')}; "
            f"Postgres has version {fresh['version']}",
        )
        _expect(
            db.queries - q0 == 1,
            f"a miss on {key} ran {db.queries - q0} queries on Postgres (db.render calls); expected exactly 1",
        )
        cached = probe.get(key)
        _expect(
            cached.hit,
            f"after the miss, memcached has nothing under {key!r}: set the card into the cache "
            "after reading it from Postgres (mc.set(post_key(post_id), card))",
        )
        q1 = db.queries
        again = read_post(mc, db, post_id)
        _expect(
            db.queries == q1,
            f"the second read of {key} ran {db.queries - q1} query(ies) on Postgres although "
            "the card was cached: return the cached value on a hit",
        )
        _expect(bytes(again) == bytes(cached.value or b""), "the second read did not return the cached card")
        version = fresh["version"]
        like_post(mc, db, post_id, user_id=int(data.users[-1][0]))
        now = db.version(post_id)
        _expect(
            now == version + 1,
            f"like_post did not update Postgres: version {version} -> {now} (call db.like(post_id, user_id))",
        )
        after = probe.get(key)
        stale = after.hit and after.value is not None and decode_card(after.value)["version"] < now
        _expect(
            not stale,
            f"after like_post the cache still holds version {version} of {key} while Postgres has "
            f"{now}: invalidate the key (mc.delete(post_key(post_id))) after the database write",
        )
        got = decode_card(bytes(read_post(mc, db, post_id)))
        _expect(got["version"] == now, f"the read after the like returned version {got['version']}, Postgres has {now}")
    print("PASS  exercise: cache-aside read path and invalidation on write")


# ------------------------------------------------------------------ notebook level: sweeps, plots, claims


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


def race_table(*runs: list[RaceOutcome]) -> pd.DataFrame:
    """The interleavings of :func:`stale_set_race`, one row each."""
    import pandas as pd

    rows = [
        {
            "lease fix": o.fixed,
            "reader read version": o.reader_saw_version,
            "Postgres version": o.db_version,
            "reader's late set": o.set_status,
            "cached version": o.cached_version,
            "stale": o.stale,
        }
        for run in runs
        for o in run
    ]
    df = pd.DataFrame(rows)
    df["cached version"] = df["cached version"].astype("Int64")
    return df


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


def check_race(naive: list[RaceOutcome], fixed: list[RaceOutcome]) -> None:
    """Claims: the stale-set race leaves stale data without the fix, and never with the lease fix."""
    from labkit.checkpoints import checkpoint

    n_stale = sum(o.stale for o in naive)
    f_stale = sum(o.stale for o in fixed)
    checkpoint(
        "the stale-set race is reproduced with plain get/set",
        n_stale,
        at_least=len(naive),
        context=f"{n_stale} of {len(naive)} interleavings left a stale card",
    )
    checkpoint(
        "with a lease (mg N, ms C) the race leaves no stale data",
        f_stale,
        at_most=0,
        context=f"{f_stale} of {len(fixed)} interleavings left a stale card; set answers "
        f"{sorted({o.set_status for o in fixed})}",
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


def view_sweep(df: pd.DataFrame, x: str, data: instagram.InstagramData | None = None) -> list[Any]:
    """What a sweep panel shows after each run: the table, then the plot."""
    return [table(df), plot_sweep(df, x=x, data=data)]


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


def latency_table(lat: dict[str, dict[str, float]]) -> pd.DataFrame:
    """:func:`latency_compare`'s result as a rounded table."""
    import pandas as pd

    df = pd.DataFrame(lat).T
    df["reads"] = df["reads"].astype(int)
    return df.round(3).rename(columns={"p50_ms": "p50 (ms)", "p99_ms": "p99 (ms)", "mean_ms": "mean (ms)"})
