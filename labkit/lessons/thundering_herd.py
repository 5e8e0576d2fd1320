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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from psycopg_pool import ConnectionPool

from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons.caching import PostStore, decode_card, post_key, render_card
from labkit.memcache_meta import MetaClient

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

LEASE_TTL = 10  # s: how long a lease / a stale item lives if the winner never sets
LOCK_TTL = 10  # s: the lock key's TTL, so a crashed lock holder doesn't block forever
BACKOFF = 0.005  # s: how long a loser waits before asking again
MAX_WAIT = 10.0  # s: a read that waits longer is a bug (lost lease), not a slow read
POOL_MAX = 32  # Postgres connections the readers share at most (the herd still sends every recompute)

Strategy = Callable[[MetaClient, str, Callable[[], bytes]], "tuple[bytes, bool]"]


def _gave_up(key: str) -> TimeoutError:
    return TimeoutError(
        f"a reader waited {MAX_WAIT}s for {key!r}: the client holding the lease/lock never "
        "set the value (did the winner forget to set, or set with the wrong CAS?)"
    )


def no_protection(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """Plain cache-aside: every client that misses goes to the database."""
    r = mc.get(key)
    if r.hit and r.value is not None:
        return r.value, False
    value = recompute()
    mc.set(key, value)
    return value, False


def lock_with_add(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """On a miss, only the client whose ``add lock:<key>`` succeeds recomputes; the others retry."""
    deadline = time.monotonic() + MAX_WAIT
    while True:
        r = mc.get(key)
        if r.hit and r.value is not None:
            return r.value, False
        if mc.set("lock:" + key, b"1", ttl=LOCK_TTL, mode="add").stored:
            try:
                value = recompute()
                mc.set(key, value)
            finally:
                mc.delete("lock:" + key)
            return value, False
        if time.monotonic() > deadline:
            raise _gave_up(key)
        time.sleep(BACKOFF)


def lease(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """``mg N``: the one client that gets W recomputes and sets with its CAS; Z means wait and retry."""
    deadline = time.monotonic() + MAX_WAIT
    while True:
        r = mc.get(key, vivify=LEASE_TTL)
        if r.hit and r.value is not None:
            return r.value, False
        if r.win:
            value = recompute()
            mc.set(key, value, cas=r.cas)  # rejected if the key was invalidated meanwhile: no stale set
            return value, False
        if time.monotonic() > deadline:
            raise _gave_up(key)
        time.sleep(BACKOFF)


def serve_stale(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """Invalidation marks the item stale (``md I``): X readers serve the old value, the W one refreshes."""
    deadline = time.monotonic() + MAX_WAIT
    while True:
        r = mc.get(key, vivify=LEASE_TTL)
        if r.win:  # a miss or a stale item: this client alone refreshes it
            value = recompute()
            mc.set(key, value, cas=r.cas)
            return value, False
        if r.stale and r.value:
            return r.value, True
        if r.hit and r.value is not None:
            return r.value, False
        if time.monotonic() > deadline:  # Z on a real miss (nothing stale to serve): wait
            raise _gave_up(key)
        time.sleep(BACKOFF)


def lease_ignoring_z(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """A broken lease: it asks for one but recomputes on Z too (used to show a checkpoint failing)."""
    r = mc.get(key, vivify=LEASE_TTL)
    if r.hit and r.value is not None:
        return r.value, False
    value = recompute()
    mc.set(key, value)
    return value, False


def from_lease_get(fn: Callable[[MetaClient, str, Callable[[], bytes]], bytes]) -> Strategy:
    """Wrap a learner's ``lease_get(mc, key, recompute) -> bytes`` as a strategy."""

    def strategy(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
        return fn(mc, key, recompute), False

    strategy.__name__ = getattr(fn, "__name__", "lease_get")
    return strategy


# how each strategy invalidates: delete, or mark stale
STRATEGIES: dict[str, tuple[Strategy, bool]] = {
    "none": (no_protection, False),
    "lock": (lock_with_add, False),
    "lease": (lease, False),
    "stale": (serve_stale, True),
}


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


# -------------------------------------------------------------------------------------------- exercise


def check_lease_get(
    lease_get: Callable[[MetaClient, str, Callable[[], bytes]], bytes],
    mc_address: Any,
    dsn: str,
    post_id: int,
    *,
    readers: int = 20,
    invalidations: int = 3,
    cost: float = 0.05,
) -> HerdResult | None:
    """Run the learner's ``lease_get(mc, key, recompute) -> bytes`` as ``readers`` concurrent clients
    on the real servers while the key is invalidated; print PASS or raise CheckpointFailed with what
    was measured. Returns the herd run's result (None if the function is not written yet)."""
    try:
        return _check_lease_get(lease_get, mc_address, dsn, post_id, readers, invalidations, cost)
    except NotImplementedError:
        print("Not attempted yet: write lease_get in the cell above, then run this cell again.")
        return None


def _check_lease_get(
    lease_get: Callable[..., bytes],
    mc_address: Any,
    dsn: str,
    post_id: int,
    readers: int,
    invalidations: int,
    cost: float,
) -> HerdResult:
    key = post_key(post_id)
    with MetaClient(mc_address) as mc:
        mc.delete(key)
        calls: list[float] = []
        rc = Recompute(dsn, post_id, 0.0, calls)
        try:
            value = lease_get(mc, key, rc)
            _expect(
                isinstance(value, (bytes, bytearray)) and value,
                f"lease_get on a cold cache returned {type(value).__name__} {str(value)[:60]!r}: return the "
                "value recompute() gave you",
            )
            _expect(
                len(calls) == 1,
                f"lease_get on a cold cache called recompute() {len(calls)} times; expected 1 "
                "(the client that gets W recomputes)",
            )
            held = mc.get(key)
            _expect(
                held.hit,
                f"after lease_get won the lease, memcached holds no value under {key!r}: set it "
                "with the lease's CAS (mc.set(key, value, cas=r.cas))",
            )
            lease_get(mc, key, rc)
            _expect(len(calls) == 1, "lease_get on a warm cache called recompute() again: return r.value on a hit")
        finally:
            rc.close()
    try:
        res = run_herd(
            mc_address,
            dsn,
            post_id,
            from_lease_get(lease_get),
            readers=readers,
            invalidations=invalidations,
            interval=max(0.3, 4 * cost),
            cost=cost,
        )
    except TimeoutError as e:
        raise CheckpointFailed(f"exercise: readers waited forever: {e}") from None
    per = res.db_queries_per_invalidation
    _expect(
        per <= 1.5,
        f"with {readers} concurrent readers, lease_get sent {res.db_queries} recomputes to Postgres "
        f"over {res.invalidations} invalidations ({per:.1f} per invalidation); a lease allows ~1: "
        "only the client whose mg answer has W (r.win) may recompute, a Z answer must wait and retry",
    )
    _expect(
        res.db_queries >= res.invalidations,
        f"only {res.db_queries} recomputes for {res.invalidations} invalidations: readers must recompute "
        "after an invalidation, not keep an old value",
    )
    _expect(res.stale_reads == 0, f"{res.stale_reads} reads returned an older version than Postgres had committed")
    print("PASS  exercise: lease-based get (one recompute per invalidation)")
    return res


def _expect(ok: object, what: str) -> None:  # any truthy value passes
    if not ok:
        raise CheckpointFailed(f"exercise: {what}")


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
