"""Lesson 10's measurement: N reader threads on one hot key while a writer invalidates it, recomputes made
expensive on the real Postgres; DB queries per invalidation, peak queries/s, client p50/p99, stale reads.
Re-exported by ``labkit.lessons.thundering_herd``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from psycopg_pool import ConnectionPool

from labkit.datasets.post_store import PostStore, decode_card, post_key, render_card
from labkit.errors import BadParameter
from labkit.lessons.herd_strategies import LEASE_TTL, MAX_WAIT, STRATEGIES, Strategy
from labkit.memcache_meta import MetaClient

if TYPE_CHECKING:
    import pandas as pd


POOL_MAX = 32  # Postgres connections the readers share at most (the herd still sends every recompute)


class Recompute:
    """The expensive recompute of the hot card, on a connection from the readers' shared pool (or, given a
    DSN, on a connection of its own).

    Each call is one trip to Postgres: ``pg_sleep(cost)`` (the explicit cost of a heavy render) then
    the post-card query. Calls are counted with their start times for the DB-load figures.
    """

    def __init__(self, source: str | ConnectionPool, post_id: int, cost: float, log: list[float]) -> None:
        self.pool = source if isinstance(source, ConnectionPool) else None
        self.store = PostStore(source) if isinstance(source, str) else None
        self.post_id, self.cost, self.log = post_id, cost, log

    def __call__(self) -> bytes:
        self.log.append(time.perf_counter())  # list.append is atomic under the GIL
        if self.store is not None:
            self.store.conn.execute("SELECT pg_sleep(%s)", (self.cost,))
            return self.store.render(self.post_id)
        assert self.pool is not None
        with self.pool.connection(timeout=MAX_WAIT * 3) as conn:
            conn.execute("SELECT pg_sleep(%s)", (self.cost,))
            return render_card(conn, self.post_id)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@dataclass
class HerdResult:
    strategy: str
    readers: int
    invalidations: int
    recompute_s: float
    db_queries: int
    reads: int
    stale_reads: int
    latencies_ms: np.ndarray = field(repr=False)
    query_times: np.ndarray = field(repr=False)  # s since start of each DB query
    invalidation_times: np.ndarray = field(repr=False)
    duration_s: float = 0.0
    start_times: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # s since start, per read

    @property
    def db_queries_per_invalidation(self) -> float:
        return self.db_queries / max(1, self.invalidations)

    def peak_db_queries_per_s(self, window: float = 0.1) -> float:
        """The highest DB query rate seen over any ``window``-second bin, in queries/s."""
        if len(self.query_times) == 0:
            return 0.0
        bins = np.floor(self.query_times / window).astype(int)
        return float(np.bincount(bins).max() / window)

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def refresh_p(self, q: float, during: bool = True) -> float:
        """Percentile (ms) of the reads that began while the value was being refreshed (``during``), i.e.
        within 2x the recompute time after an invalidation, or of all the other reads (plain hits).
        Both sets run side by side under the same machine load, so their ratio does not depend on it."""
        t = self.start_times
        inside = np.zeros(len(t), dtype=bool)
        for t_inv in self.invalidation_times:
            inside |= (t >= t_inv) & (t < t_inv + 2 * self.recompute_s)
        sel = self.latencies_ms[inside if during else ~inside]
        return float(np.percentile(sel, q)) if len(sel) else float("nan")

    def baseline_p(self, q: float) -> float:
        """Percentile (ms) of the reads before the first invalidation: plain cache hits, same run, same load."""
        if len(self.invalidation_times) == 0:
            return self.p(q)
        quiet = self.latencies_ms[self.start_times < self.invalidation_times[0]]
        return float(np.percentile(quiet, q)) if len(quiet) else float("nan")

    def row(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "readers": self.readers,
            "invalidations": self.invalidations,
            "db_queries": self.db_queries,
            "db_queries_per_invalidation": self.db_queries_per_invalidation,
            "peak_db_queries_per_s": self.peak_db_queries_per_s(),
            "reads": self.reads,
            "p50_ms": self.p(50),
            "p99_ms": self.p(99),
            "max_ms": float(self.latencies_ms.max()),
            "hit_p99_ms": self.refresh_p(99, during=False),
            "refresh_p99_ms": self.refresh_p(99),
            "stale_reads": self.stale_reads,
        }


def run_herd(
    mc_address: Any,
    dsn: str,
    post_id: int,
    strategy: str | Strategy,
    *,
    readers: int = 50,
    invalidations: int = 6,
    interval: float = 0.6,
    cost: float = 0.2,
    think: float = 0.05,
    mark_stale: bool | None = None,
    name: str | None = None,
    pool_size: int | None = None,
) -> HerdResult:
    """Run ``readers`` concurrent clients on the hot post while it is invalidated ``invalidations`` times.

    ``strategy`` is a name from STRATEGIES or a strategy function. ``think`` is each reader's pause
    between reads (a client issues a read every ~think seconds). The writer bumps the post's version
    in Postgres, then invalidates the key (delete, or ``md I`` when ``mark_stale``).
    A read is stale when the version it returned is older than the last version that had been
    committed and invalidated when the read began. The readers' recomputes share a pool of at most
    ``pool_size`` (default POOL_MAX) Postgres connections; every recompute is still a query.
    """
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise BadParameter(f"strategy {strategy!r} unknown: use one of {', '.join(STRATEGIES)} or a function")
        label = name or strategy
        fn, default_stale = STRATEGIES[strategy]
    else:
        fn, default_stale = strategy, False
        label = name or str(getattr(strategy, "__name__", "custom"))
    mark_stale = default_stale if mark_stale is None else mark_stale
    if readers < 1 or invalidations < 1 or interval <= cost or cost < 0 or think < 0:
        raise BadParameter(
            f"need readers >= 1, invalidations >= 1, 0 <= cost < interval (got readers={readers}, "
            f"invalidations={invalidations}, cost={cost}, interval={interval})"
        )
    key = post_key(post_id)
    query_log: list[float] = []
    size = min(readers, pool_size or POOL_MAX)
    if size < 1:
        raise BadParameter(f"pool_size={pool_size}: the readers need at least 1 Postgres connection")
    pool = ConnectionPool(dsn, min_size=size, max_size=size, kwargs={"autocommit": True}, open=True)
    pool.wait(timeout=60)
    clients = [(MetaClient(mc_address).connect(), Recompute(pool, post_id, cost, query_log)) for _ in range(readers)]
    writer_db, writer_mc = PostStore(dsn), MetaClient(mc_address).connect()
    committed = [writer_db.version(post_id)]  # last element: the newest committed-and-invalidated version
    # Start from a warm cache holding the current version (not counted: it is not a herd).
    writer_mc.delete("lock:" + key)
    writer_mc.set(key, writer_db.render(post_id))
    stop = threading.Event()
    per_thread: list[list[tuple[float, float, bool]]] = [[] for _ in range(readers)]
    errors: list[BaseException] = []
    start_gate = threading.Barrier(readers + 1)

    def reader(i: int) -> None:
        mc, recompute = clients[i]
        out = per_thread[i]
        try:
            start_gate.wait()
            while not stop.is_set():
                want = committed[-1]
                t0 = time.perf_counter()
                value, _served_stale = fn(mc, key, recompute)
                dt = time.perf_counter() - t0
                out.append((t0, dt, decode_card(value)["version"] < want))
                if think:
                    time.sleep(think)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(readers)]
    for t in threads:
        t.start()
    inval_times: list[float] = []
    try:
        start_gate.wait()
        t_start = time.perf_counter()
        n_queries_before = len(query_log)
        for _ in range(invalidations):
            time.sleep(interval)
            version = writer_db.like(post_id, 1 + len(inval_times))
            inval_times.append(time.perf_counter())
            if mark_stale:
                writer_mc.delete(key, invalidate=True, ttl=LEASE_TTL)
            else:
                writer_mc.delete(key)
            committed.append(version)  # from now on, an older version is a stale read
            if errors:
                break
        time.sleep(interval)  # let the last herd settle before stopping
    finally:
        stop.set()
        for t in threads:
            t.join(MAX_WAIT + 5)
        for mc, rc in clients:
            mc.close()
            rc.close()
        pool.close()
        writer_db.close()
        writer_mc.close()
    if errors:
        raise errors[0]
    duration = time.perf_counter() - t_start
    samples = [s for lst in per_thread for s in lst if s[0] >= t_start]
    queries = np.array(query_log[n_queries_before:]) - t_start
    return HerdResult(
        strategy=label,
        readers=readers,
        invalidations=len(inval_times),
        recompute_s=cost,
        db_queries=len(queries),
        reads=len(samples),
        stale_reads=sum(1 for s in samples if s[2]),
        latencies_ms=np.array([s[1] * 1000 for s in samples]),
        query_times=queries,
        invalidation_times=np.array(inval_times) - t_start,
        duration_s=duration,
        start_times=np.array([s[0] for s in samples]) - t_start,
    )


def compare(
    mc_address: Any,
    dsn: str,
    post_id: int,
    strategies: list[str] | None = None,
    progress: Callable[..., None] | None = None,
    **kw: Any,
) -> dict[str, HerdResult]:
    """Run :func:`run_herd` for each strategy with the same parameters.
    ``progress(fraction, text)`` is called after each strategy (the panel's progress bar)."""
    names = strategies or list(STRATEGIES)
    out = {}
    for i, s in enumerate(names):
        out[s] = run_herd(mc_address, dsn, post_id, s, **kw)
        if progress is not None:
            progress((i + 1) / len(names), f"{s} done")
    return out


def protocol_demo(mc_address: Any, key: str = "demo:celebrity") -> pd.DataFrame:
    """Two clients, A and B, speak the lease and serve-stale protocol on the real memcached; one row per
    command with memcached's answer (status, value, and the W/Z/X flags)."""
    import pandas as pd

    rows: list[dict[str, Any]] = []

    def note(client: str, command: str, r: Any) -> Any:
        flags = " ".join(f for f, on in (("W", r.win), ("Z", r.lease_taken), ("X", r.stale)) if on)
        value = "" if not r.value else r.value.decode(errors="replace")
        rows.append({"client": client, "command": command, "status": r.status, "value": value, "flags": flags})
        return r

    with MetaClient(mc_address) as a, MetaClient(mc_address) as b:
        a.delete(key)
        ra = note("A", f"mg {key} v c N30", a.get(key, vivify=30))
        note("B", f"mg {key} v c N30", b.get(key, vivify=30))
        note("A", f"ms {key} C<cas of A's lease>  'v1'", a.set(key, b"v1", cas=ra.cas))
        note("B", f"mg {key} v c N30", b.get(key, vivify=30))
        note("writer", f"md {key} I T30", a.delete(key, invalidate=True, ttl=30))
        ra = note("A", f"mg {key} v c N30", a.get(key, vivify=30))
        note("B", f"mg {key} v c N30", b.get(key, vivify=30))
        note("A", f"ms {key} C<cas>  'v2'", a.set(key, b"v2", cas=ra.cas))
        note("B", f"mg {key} v c N30", b.get(key, vivify=30))
        a.delete(key)
    return pd.DataFrame(rows)
