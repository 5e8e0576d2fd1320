"""Lesson 03's IDs: many concurrent clients insert into every shard through labkit.load, each ID kept with the
client's clock around its insert, and the checks that they are unique, ordered per shard, and decode back to
their shard and time (Instagram's 41 | 13 | 10 bits, :mod:`labkit.ids`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labkit import ids
from labkit.checkpoints import checkpoint
from labkit.lessons.shard_pool import ConnectionPool
from labkit.lessons.shard_router import Router, insert_sql
from labkit.load.runner import run
from labkit.load.workload import Uniform, Workload

__all__ = [
    "IdRun",
    "check_ids",
    "decoded_sample",
    "duplicates",
    "id_run",
    "max_clock_error_ms",
    "order_violations",
    "shard_mismatches",
]


@dataclass
class IdRun:
    """IDs from concurrent inserts: per insert the shard it went to, the ID, and the client's wall
    clock (Unix ms) just before sending and just after the answer."""

    shard: np.ndarray
    id: np.ndarray
    t_sent_ms: np.ndarray
    t_acked_ms: np.ndarray
    clients: int
    n_shards: int
    result: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def ids_per_s(self) -> float:
        return float(self.result.throughput) if self.result is not None else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "IDs generated": len(self.id),
            "clients": self.clients,
            "logical shards": self.n_shards,
            "shards used": len(np.unique(self.shard)),
            "IDs/s": round(self.ids_per_s),
            "duplicates": duplicates(self.id),
            "order violations": order_violations(self),
            "shard mismatches": shard_mismatches(self),
            "max clock error (ms)": round(max_clock_error_ms(self), 1),
        }


def id_run(
    router: Router,
    pool: ConnectionPool,
    *,
    clients: int = 16,
    duration: float | None = 2.0,
    ops: int | None = None,
    seed: int = 0,
    progress: Callable[..., Any] | None = None,
    stop: Any = None,
) -> IdRun:
    """Insert photos from ``clients`` concurrent clients into every shard for ``duration`` seconds (or
    ``ops`` inserts) through labkit.load, keeping each ID with the client's clock around its insert."""
    n = router.n_shards
    rows: list[tuple[int, int, float, float]] = []
    smap = list(router.map)
    sqls = [insert_sql(s) for s in range(n)]

    async def insert(ctx: Any, op: Any) -> None:
        # each client walks the shards from its own starting point: after n/clients inserts per client every
        # shard has IDs, then each shard gets them from several clients in turn
        shard = (op.seq + op.client * max(1, n // clients)) % n
        t0 = time.time()
        got = await ctx.conn[smap[shard]].query(sqls[shard], (shard, op.seq))
        rows.append((shard, int(got[0][0]), t0 * 1000.0, time.time() * 1000.0))

    wl = Workload(
        keys=Uniform(n), mix={"insert": 1.0}, clients=clients, duration=duration, ops=ops, seed=seed, value_size=0
    )
    pool.reserve(clients)
    pool.warm(router, clients=clients)
    res = run(insert, wl, driver=pool.driver(), name="id_run", progress=progress, stop=stop, use_uvloop=True)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4) if rows else np.zeros((0, 4))
    return IdRun(
        arr[:, 0].astype(np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        arr[:, 2],
        arr[:, 3],
        clients,
        n,
        res,
        list(res.notes),
    )


def duplicates(values: np.ndarray) -> int:
    return int(len(values) - len(np.unique(values)))


def order_violations(r: IdRun) -> int:
    """Pairs in one shard where an insert that was acknowledged before another one was *sent* got the
    larger ID (counted once per later insert). Overlapping inserts may come back in either order."""
    bad = 0
    for s in np.unique(r.shard):
        m = r.shard == s
        sent, acked, idv = r.t_sent_ms[m], r.t_acked_ms[m], r.id[m]
        by_ack = np.argsort(acked, kind="stable")
        running = np.maximum.accumulate(idv[by_ack])  # max ID among the first k acknowledged
        k = np.searchsorted(acked[by_ack], sent, side="left")  # how many were acked before each was sent
        prior_max = np.where(k > 0, running[np.maximum(k - 1, 0)], -1)
        bad += int(np.sum(prior_max >= idv))
    return bad


def shard_mismatches(r: IdRun) -> int:
    """IDs whose 13 shard bits do not name the shard they were inserted into."""
    return int(np.sum(((r.id >> ids.SEQ_BITS) & (ids.MAX_SHARDS - 1)) != r.shard))


def max_clock_error_ms(r: IdRun) -> float:
    """How far the time in the IDs falls outside [sent, acked] of its insert, at worst (ms)."""
    if len(r.id) == 0:
        return float("nan")
    t = (r.id >> (ids.SHARD_BITS + ids.SEQ_BITS)) + ids.EPOCH_MS
    early = np.floor(r.t_sent_ms) - t
    late = t - np.ceil(r.t_acked_ms)
    return float(max(0.0, early.max(), late.max()))


def check_ids(r: IdRun, *, min_ids: int = 500, min_clients: int = 8) -> None:
    """The ID checkpoint: many IDs from many clients on all shards; unique; ordered in time per shard;
    the shard and the time decode back."""
    ctx = f"{len(r.id)} IDs from {r.clients} clients on {r.n_shards} shards"
    checkpoint("IDs came from many concurrent clients", r.clients, at_least=min_clients, context=ctx)
    checkpoint("IDs were generated concurrently by many clients", len(r.id), at_least=min_ids, context=ctx)
    checkpoint("IDs landed on every logical shard", len(np.unique(r.shard)), at_least=r.n_shards, context=ctx)
    checkpoint("every ID is unique", duplicates(r.id), at_most=0, context=ctx)
    checkpoint("per shard, a later insert always gets a larger ID", order_violations(r), at_most=0, context=ctx)
    checkpoint("every ID decodes to the shard it was written to", shard_mismatches(r), at_most=0, context=ctx)
    checkpoint(
        "every ID's time is within 1 s of its insert",
        max_clock_error_ms(r),
        at_most=1000.0,
        context=ctx + " (ms outside the insert's send..ack window)",
    )


def decoded_sample(r: IdRun, n: int = 6) -> Any:
    """A few generated IDs split into their three fields, next to where and when they were made."""
    import pandas as pd

    idx = np.linspace(0, len(r.id) - 1, min(n, len(r.id))).astype(int)
    rows = []
    for i in idx:
        d = ids.decode(int(r.id[i]))
        rows.append(
            {
                "id": int(r.id[i]),
                "binary (41 | 13 | 10)": f"{d.ms_since_epoch:041b} | {d.shard:013b} | {d.seq:010b}",
                "shard written to": int(r.shard[i]),
                "decoded shard": d.shard,
                "seq": d.seq,
                "decoded time (UTC)": d.time.strftime("%H:%M:%S.%f")[:-3],
                "insert sent at (UTC)": _dt_ms(r.t_sent_ms[i]),
            }
        )
    return pd.DataFrame(rows)


def _dt_ms(ms: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]
