"""Lesson 03: what sharding costs — a user's feed (the latest photos of everyone they follow).

On one server the feed is one indexed query. Sharded by user, the followees live on many shards on
every server: the router groups them by server, sends each server one query (a UNION ALL over the
shards it holds), waits for the slowest, and merges. Because Instagram IDs sort by time, the merge is
"largest IDs first" with no timestamp column. Both versions run through labkit.load on the same
data; the single-server copy is a table ``public.photos_all`` on the first server.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter
from labkit.lessons.shard_pool import ConnectionPool, schema
from labkit.lessons.shard_router import USERS_PER_SHARD, Router
from labkit.load.runner import run
from labkit.load.workload import Uniform, Workload

__all__ = ["FeedResult", "Feeds", "check_feed", "feed_compare", "prepare_feeds", "table"]

FEED_LIMIT = 20


@dataclass
class Feeds:
    """Per user: the followees, the single-server query, and the per-server sharded queries."""

    router: Router
    followees: list[np.ndarray]
    single: list[tuple[str, tuple[str, ...]]]
    sharded: list[list[tuple[int, str, tuple[str, ...]]]]

    @property
    def users(self) -> int:
        return len(self.followees)

    def shards_touched(self) -> float:
        return float(np.mean([len({int(f) % self.router.n_shards for f in fs}) for fs in self.followees]))

    def servers_touched(self) -> float:
        return float(np.mean([len(q) for q in self.sharded]))


def _array(values: Any) -> str:
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def prepare_feeds(router: Router, *, follows: int = 30, seed: int = 7) -> Feeds:
    """A follow graph over the seeded users (each follows ``follows`` others, uniformly), the
    single-server copy of all photos, and each user's feed queries in both layouts."""
    users = router.n_shards * USERS_PER_SHARD
    if not 1 <= follows < users:
        raise BadParameter(f"follows={follows}: between 1 and {users - 1} (the users of this layout)")
    rng = np.random.default_rng(seed)
    followees = []
    for u in range(users):
        f = rng.choice(users - 1, follows, replace=False)
        followees.append(np.where(f >= u, f + 1, f))  # never oneself
    with psycopg.connect(router.dsns[0], autocommit=True) as home:
        home.execute("DROP TABLE IF EXISTS public.photos_all")
        home.execute("CREATE TABLE public.photos_all (id bigint PRIMARY KEY, user_id bigint NOT NULL, token bigint)")
        for j, dsn in enumerate(router.dsns):
            shards = [s for s, m in enumerate(router.map) if m == j]
            if not shards:
                continue
            # only this layout's users: schemas are shared by layouts of other shard counts (other runs)
            union = " UNION ALL ".join(
                f"SELECT id, user_id, token FROM {schema(s)}.photos WHERE user_id % {router.n_shards} = {s}"
                for s in shards
            )
            with (
                psycopg.connect(dsn, autocommit=True) as src,
                src.cursor().copy(f"COPY ({union}) TO STDOUT") as out,
                home.cursor().copy("COPY public.photos_all FROM STDIN") as inp,
            ):
                for block in out:
                    inp.write(block)
        home.execute("CREATE INDEX photos_all_user ON public.photos_all (user_id, id DESC)")
        home.execute("ANALYZE public.photos_all")
    single_sql = (
        f"SELECT id FROM public.photos_all WHERE user_id = ANY(%s::bigint[]) ORDER BY id DESC LIMIT {FEED_LIMIT}"
    )
    single: list[tuple[str, tuple[str, ...]]] = []
    sharded: list[list[tuple[int, str, tuple[str, ...]]]] = []
    for fs in followees:
        single.append((single_sql, (_array(fs),)))
        by_server: dict[int, dict[int, list[int]]] = {}
        for f in fs:
            s = int(f) % router.n_shards
            by_server.setdefault(router.map[s], {}).setdefault(s, []).append(int(f))
        per: list[tuple[int, str, tuple[str, ...]]] = []
        for j, on_server in sorted(by_server.items()):
            parts = " UNION ALL ".join(
                f"(SELECT id FROM {schema(s)}.photos WHERE user_id = ANY(%s::bigint[]) "
                f"ORDER BY id DESC LIMIT {FEED_LIMIT})"
                for s in sorted(on_server)
            )
            per.append(
                (
                    j,
                    f"SELECT id FROM ({parts}) t ORDER BY id DESC LIMIT {FEED_LIMIT}",
                    tuple(_array(on_server[s]) for s in sorted(on_server)),
                )
            )
        sharded.append(per)
    return Feeds(router, followees, single, sharded)


async def _sharded_feed(conns: Any, queries: list[tuple[int, str, tuple[str, ...]]]) -> list[int]:
    parts = await asyncio.gather(*(conns[j].query(sql, params) for j, sql, params in queries))
    return heapq.nlargest(FEED_LIMIT, (int(r[0]) for rows in parts for r in rows))


@dataclass
class FeedResult:
    single: Any
    sharded: Any
    shards_touched: float
    servers_touched: float
    mismatches: int
    checked: int
    clients: int
    notes: list[str] = field(default_factory=list)

    @property
    def p50_ratio(self) -> float:
        return self.sharded.percentiles()["p50"] / self.single.percentiles()["p50"]

    @property
    def throughput_ratio(self) -> float:
        return self.single.throughput / self.sharded.throughput


def feed_compare(
    feeds: Feeds, pool: ConnectionPool, *, clients: int = 8, duration: float = 2.0, check_users: int = 50, seed: int = 0
) -> FeedResult:
    """Time the feed on one server vs across the shards (same users, same data), after checking that
    both give the same photos for ``check_users`` users."""
    pool.reserve(clients)
    pool.warm(feeds.router, clients=clients)
    rng = np.random.default_rng(seed)
    sample = rng.choice(feeds.users, min(check_users, feeds.users), replace=False)

    async def compare_op(ctx: Any, op: Any) -> None:
        u = int(sample[op.rank])
        sql, params = feeds.single[u]
        one = [int(r[0]) for r in await ctx.conn[0].query(sql, params)]
        many = await _sharded_feed(ctx.conn, feeds.sharded[u])
        if one != many:
            ctx.count("mismatches")

    chk = run(
        compare_op,
        Workload(
            keys=Uniform(len(sample)),
            mix={"check": 1.0},
            clients=1,
            ops=len(sample),
            duration=None,
            seed=seed,
            value_size=0,
        ),
        driver=pool.driver(),
        name="check",
    )

    async def single_op(ctx: Any, op: Any) -> None:
        sql, params = feeds.single[op.rank]
        await ctx.conn[0].query(sql, params)

    async def sharded_op(ctx: Any, op: Any) -> None:
        await _sharded_feed(ctx.conn, feeds.sharded[op.rank])

    results = {}
    for name, fn in (("one server", single_op), ("sharded", sharded_op)):
        wl = Workload(
            keys=Uniform(feeds.users), mix={"feed": 1.0}, clients=clients, duration=duration, seed=seed, value_size=0
        )
        results[name] = run(fn, wl, driver=pool.driver(), name=name, use_uvloop=True)
    return FeedResult(
        results["one server"],
        results["sharded"],
        feeds.shards_touched(),
        feeds.servers_touched(),
        int(chk.counters.get("mismatches", 0)) + chk.error_count,
        chk.ops,
        clients,
        [n for r in results.values() for n in r.notes],
    )


def table(r: FeedResult) -> Any:
    import pandas as pd

    rows = []
    for name, res, queries, shards in (
        ("one server", r.single, 1, 1),
        ("sharded", r.sharded, r.servers_touched, r.shards_touched),
    ):
        p = res.percentiles()
        rows.append(
            {
                "layout": name,
                "queries per feed": round(queries, 1),
                "shards read per feed": round(shards, 1),
                "p50 (ms)": round(p["p50"], 2),
                "p99 (ms)": round(p["p99"], 2),
                "feeds/s": round(res.throughput),
                "errors": res.error_count,
            }
        )
    return pd.DataFrame(rows).set_index("layout")


def check_feed(r: FeedResult, *, slower: float = 1.2) -> None:
    """The cost checkpoint: the sharded feed returns the same photos, reads many shards, and is slower."""
    ctx = (
        f"{r.clients} clients, {r.shards_touched:.1f} shards on {r.servers_touched:.1f} servers per feed; "
        f"p50 {r.sharded.percentiles()['p50']:.2f} vs {r.single.percentiles()['p50']:.2f} ms"
    )
    checkpoint(
        "the sharded feed returns the same photos as the single-server feed",
        r.mismatches,
        at_most=0,
        context=f"{r.checked} users compared",
    )
    checkpoint("no feed query failed", r.single.error_count + r.sharded.error_count, at_most=0, context=ctx)
    checkpoint("a feed reads from several servers when sharded", r.servers_touched, at_least=2, context=ctx)
    checkpoint(
        "the cross-shard feed is slower than the single-server feed (p50)", r.p50_ratio, at_least=slower, context=ctx
    )
