"""Lesson 03: move one logical shard to another server while writers keep writing to it.

Copy plus a short write freeze, in five steps (each timed):

1. prepare: the shard's schema on the target (same ``next_id()``, shard number baked in), emptied;
2. bulk copy: every row visible now, with its ID, by COPY (the shard stays writable);
3. catch up: rows that arrived meanwhile (IDs are time-ordered, so "arrived meanwhile" is "ID above the
   last copied, minus a lag window for transactions that committed late"); repeated while it shrinks;
4. freeze and switch: the router holds new writes to this shard and waits for the ones in flight; the
   last rows are copied by comparing the ID sets exactly; the target's sequence is set past the
   source's; the map points at the target; writes resume (they waited, they did not fail);
5. clean up: the old copy is deleted once nothing writes to it.

Every write carries a unique token, so the lesson counts rows written (attempted), acknowledged
(Postgres returned the ID) and present at the shard's location afterwards: lost = acknowledged and
absent, duplicated = a token present twice. The alternative, logical replication (CREATE PUBLICATION
/ SUBSCRIPTION), streams changes instead of re-copying and freezes for less time, but needs
``wal_level=logical`` (a restart), a replication slot that holds WAL on the source while it lags, and
sequences are not replicated (the switch must still set them).

Deliberately broken variants for the lesson and its tests: ``freeze=False`` switches without holding
writes (in-flight rows land on the old server after the last copy), ``stale_router=True`` makes the
writers keep the map they started with, ``keep_ids=False`` copies rows without their IDs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from labkit import ids
from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter
from labkit.lessons.shard_pool import ConnectionPool, schema
from labkit.lessons.shard_router import Router, ensure_shards
from labkit.load.runner import run
from labkit.load.workload import Uniform, Workload
from labkit.services.postgres import fetch_value

__all__ = ["MoveResult", "check_move", "move_shard", "move_under_writes", "plot", "table", "view"]

_TAG = 10**12  # a write's token: run tag + client * 10^9 + its sequence number (unique per run)
LAG_WINDOW_MS = 2000  # a write's ID is taken at insert time; it may commit up to this much later


@dataclass
class MoveResult:
    shard: int
    source: int
    target: int
    written: int
    acknowledged: int
    present: int
    lost: int
    duplicated: int
    old_location_rows_after_switch: int
    writes_routed_to_old_after_switch: int
    acked_during_move: int
    acked_after_switch: int
    steps: dict[str, float]
    freeze_s: float
    move_s: float
    writers: int
    max_write_ms: float
    broken: str = ""
    window: tuple[float, float, float] = (0.0, 0.0, 0.0)  # move start, freeze start, switch done (s into the run)
    notes: list[str] = field(default_factory=list)
    result: Any = None

    def row(self) -> dict[str, Any]:
        return {
            "rows written": self.written,
            "acknowledged": self.acknowledged,
            "present afterwards": self.present,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "writes to the old server after the switch": self.writes_routed_to_old_after_switch
            + self.old_location_rows_after_switch,
            "move (s)": round(self.move_s, 3),
            "write freeze (ms)": round(self.freeze_s * 1000, 1),
            "slowest write (ms)": round(self.max_write_ms, 1),
        }


def _copy_rows(
    src: psycopg.Connection, dst: psycopg.Connection, sch: str, where: str, params: tuple[Any, ...], keep_ids: bool
) -> int:
    """COPY the photos matching ``where`` from source to target; with ``keep_ids`` the IDs travel too
    (via a staging table, so rows copied twice are skipped rather than failing the batch)."""
    cols = "id, user_id, token" if keep_ids else "user_id, token"
    n = 0
    with dst.transaction():
        dst.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staging (id bigint, user_id bigint, token bigint) ON COMMIT DELETE ROWS"
        )
        with (
            src.cursor().copy(f"COPY (SELECT {cols} FROM {sch}.photos WHERE {where}) TO STDOUT", params) as out,
            dst.cursor().copy(f"COPY staging ({cols}) FROM STDIN") as inp,
        ):
            for block in out:
                inp.write(block)
        if keep_ids:
            cur = dst.execute(f"INSERT INTO {sch}.photos SELECT * FROM staging ON CONFLICT (id) DO NOTHING")
        else:  # broken on purpose: the target generates new IDs, so rows copied twice become two rows
            cur = dst.execute(f"INSERT INTO {sch}.photos (user_id, token) SELECT user_id, token FROM staging")
        n = cur.rowcount
    return n


def move_shard(
    router: Router,
    shard: int,
    target: int,
    *,
    freeze: bool = True,
    keep_ids: bool = True,
    on_switch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Move ``shard`` to server ``target`` while the router keeps serving it. Returns timings and the
    source's row count at the switch."""
    source = router.map[shard]
    if target == source:
        raise BadParameter(f"shard {shard} already lives on server {target + 1}: pick another target")
    if not 0 <= target < len(router.dsns):
        raise BadParameter(f"target server {target + 1}: the layout has servers 1..{len(router.dsns)}")
    sch = schema(shard)
    steps: dict[str, float] = {}
    t_start = time.perf_counter()
    ensure_shards(router.dsns[target], [shard], router.n_shards, seed=False)
    with (
        psycopg.connect(router.dsns[source], autocommit=True) as src,
        psycopg.connect(router.dsns[target], autocommit=True) as dst,
    ):
        dst.execute(f"TRUNCATE {sch}.photos")
        steps["prepare"] = time.perf_counter() - t_start
        t = time.perf_counter()
        top = fetch_value(src, f"SELECT coalesce(max(id), 0) FROM {sch}.photos")
        _copy_rows(src, dst, sch, "id <= %s", (top,), keep_ids)
        steps["bulk copy"] = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(5):
            since = max(0, top - (LAG_WINDOW_MS << (ids.SHARD_BITS + ids.SEQ_BITS)))
            new_top = fetch_value(src, f"SELECT coalesce(max(id), 0) FROM {sch}.photos")
            copied = _copy_rows(src, dst, sch, "id > %s AND id <= %s", (since, new_top), keep_ids)
            top = new_top
            if copied < 20:
                break
        steps["catch up"] = time.perf_counter() - t
        t = time.perf_counter()
        if freeze:
            router.freeze(shard)
        try:
            if keep_ids:  # exact: every source ID the target lacks
                have = {r[0] for r in dst.execute(f"SELECT id FROM {sch}.photos")}
                missing = [r[0] for r in src.execute(f"SELECT id FROM {sch}.photos") if r[0] not in have]
                _copy_rows(src, dst, sch, "id = ANY(%s)", (missing,), keep_ids)
            else:
                since = max(0, top - (LAG_WINDOW_MS << (ids.SHARD_BITS + ids.SEQ_BITS)))
                _copy_rows(src, dst, sch, "id > %s", (since,), keep_ids)
            last = fetch_value(src, f"SELECT last_value FROM {sch}.id_seq")
            dst.execute(f"SELECT setval('{sch}.id_seq', %s)", (last + 1,))
            rows_at_switch = fetch_value(src, f"SELECT count(*) FROM {sch}.photos")
            router.move(shard, target)
            if on_switch is not None:
                on_switch()
        finally:
            if freeze:
                router.unfreeze(shard)
        steps["freeze + switch"] = time.perf_counter() - t
    return {
        "source": source,
        "steps": steps,
        "freeze_s": steps["freeze + switch"] if freeze else 0.0,
        "move_s": time.perf_counter() - t_start,
        "source_rows_at_switch": int(rows_at_switch),
    }


def move_under_writes(
    router: Router,
    pool: ConnectionPool,
    shard: int,
    target: int,
    *,
    writers: int = 16,
    duration: float = 3.0,
    move_at: float = 0.3,
    freeze: bool = True,
    stale_router: bool = False,
    keep_ids: bool = True,
    seed: int = 0,
) -> MoveResult:
    """Writers (through labkit.load) insert photos for users of ``shard`` for ``duration`` s; after
    ``move_at`` of it the shard moves to ``target``. Counts written / acknowledged / present."""
    if not 0 <= shard < router.n_shards:
        raise BadParameter(f"shard={shard}: the layout has shards 0..{router.n_shards - 1}")
    if not 0 < move_at < 1:
        raise BadParameter(f"move_at={move_at}: a fraction of the run, e.g. 0.3")
    if not 0 <= target < len(router.dsns) or target == router.map[shard]:
        raise BadParameter(
            f"shard {shard} already lives on server {target + 1}: pick another target"
            if 0 <= target < len(router.dsns)
            else f"target server {target + 1}: the layout has servers 1..{len(router.dsns)}"
        )
    sch = schema(shard)
    n = router.n_shards
    pool.reserve(writers)
    pool.warm(router, clients=writers)
    sql = f"INSERT INTO {sch}.photos (user_id, token) VALUES (%s, %s) RETURNING id"
    run_tag = (time.time_ns() // 1000 % 1_000_000 + 1) * _TAG  # tokens unique across runs: moves count apart
    acked: list[tuple[int, int]] = []
    attempted = [0]
    started_map = list(router.map)
    switched = threading.Event()
    routed_old_after = [0]
    source = router.map[shard]

    async def write(ctx: Any, op: Any) -> None:
        token = run_tag + op.client * 1_000_000_000 + op.seq
        attempted[0] += 1
        while True:
            server = router.begin_write(shard)
            if server is not None:
                break
            await asyncio.sleep(0.001)  # frozen: wait for the switch, do not fail the write
        try:
            if stale_router:
                server = started_map[shard]
            if switched.is_set() and server == source:
                routed_old_after[0] += 1
            got = await ctx.conn[server].query(sql, (shard + n * op.rank, token))
            acked.append((token, int(got[0][0])))
        finally:
            router.end_write(shard)

    # the writers run until told to stop: ``duration * move_at`` before the move, as long as it takes,
    # then ``duration * (1 - move_at)`` more, so writes after the switch are always part of the test
    wl = Workload(
        keys=Uniform(64), mix={"insert": 1.0}, clients=writers, duration=duration + 120, seed=seed, value_size=0
    )
    box: dict[str, Any] = {}
    stop = threading.Event()

    def load() -> None:
        try:
            box["res"] = run(
                write,
                wl,
                driver=pool.driver(),
                name=f"writers on shard {shard}",
                use_uvloop=True,
                interval=0.1,
                stop=stop,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised after the join
            box["error"] = exc

    def on_switch() -> None:
        switched.set()
        acked_at[1] = len(acked)

    acked_at = [0, 0]
    t_run = time.perf_counter()
    th = threading.Thread(target=load, name="lesson03-writers", daemon=True)
    th.start()
    try:
        time.sleep(duration * move_at)
        acked_at[0] = len(acked)
        t_move = time.perf_counter() - t_run
        info = move_shard(router, shard, target, freeze=freeze, keep_ids=keep_ids, on_switch=on_switch)
        time.sleep(duration * (1 - move_at))
    finally:
        stop.set()
        th.join()
    if "error" in box:
        raise box["error"]
    res = box["res"]
    acked_during = acked_at[1] - acked_at[0]
    tgt = router.dsns[target]
    with psycopg.connect(tgt, autocommit=True) as conn:
        present = conn.execute(
            f"SELECT token, id FROM {sch}.photos WHERE token BETWEEN %s AND %s", (run_tag, run_tag + _TAG - 1)
        ).fetchall()
    with psycopg.connect(router.dsns[source], autocommit=True) as conn:
        old_rows = fetch_value(conn, f"SELECT count(*) FROM {sch}.photos")
        conn.execute(f"TRUNCATE {sch}.photos")  # clean up: the old copy goes
    tokens = [p[0] for p in present]
    present_ids = {p[1] for p in present}
    lost = (
        sum(1 for tok, id_ in acked if id_ not in present_ids) if keep_ids else len({t for t, _ in acked} - set(tokens))
    )
    broken = ", ".join(
        x
        for x, on in (("no freeze", not freeze), ("stale router", stale_router), ("IDs not copied", not keep_ids))
        if on
    )
    return MoveResult(
        shard=shard,
        source=source,
        target=target,
        written=attempted[0],
        acknowledged=len(acked),
        present=len(tokens),
        lost=lost,
        duplicated=len(tokens) - len(set(tokens)),
        old_location_rows_after_switch=int(old_rows) - info["source_rows_at_switch"],
        writes_routed_to_old_after_switch=routed_old_after[0],
        acked_during_move=acked_during,
        acked_after_switch=len(acked) - acked_at[1],
        steps=info["steps"],
        freeze_s=info["freeze_s"],
        move_s=info["move_s"],
        writers=writers,
        max_write_ms=res.percentiles()["max"],
        broken=broken,
        notes=list(res.notes),
        result=res,
        window=(t_move, t_move + info["move_s"] - info["steps"]["freeze + switch"], t_move + info["move_s"]),
    )


def table(*moves: MoveResult) -> Any:
    import pandas as pd

    return pd.DataFrame([{"variant": m.broken or "copy + freeze", **m.row()} for m in moves]).set_index("variant")


def plot(m: MoveResult) -> Any:
    """Write throughput over the run, with the move's steps shaded."""
    import matplotlib.pyplot as plt

    df = m.result.to_frame()
    _, ax = plt.subplots(figsize=(6.4, 3.4), layout="constrained")
    ax.plot(df["t"], df["ops_per_s"], "o-", ms=3, label="acknowledged writes")
    start, freeze, done = m.window
    ax.axvspan(start, freeze, color="tab:blue", alpha=0.12, label="copy + catch up (writes go on)")
    ax.axvspan(freeze, max(done, freeze + 0.01), color="tab:red", alpha=0.3, label="freeze + switch")
    ax.set_xlabel("time since the writers started (s)")
    ax.set_ylabel("writes/s to the moving shard")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"shard {m.shard}: server {m.source + 1} -> {m.target + 1}; freeze "
        f"{m.freeze_s * 1000:.0f} ms of a {m.move_s:.2f} s move",
        fontsize=10,
    )
    ax.legend()
    return ax


def view(m: MoveResult) -> list[Any]:
    """The panel's view of a move: the counts and the write rate through the move."""
    return [table(m), plot(m)]


def check_move(m: MoveResult) -> None:
    """The move checkpoint: the move happened under real writes, lost and duplicated nothing, and no
    write reached the old location after the switch."""
    ctx = (
        f"shard {m.shard} moved {m.source}->{m.target} under {m.writers} writers"
        + (f" ({m.broken})" if m.broken else "")
        + f": {m.acknowledged} acknowledged, {m.present} present"
    )
    checkpoint("writers kept writing to the shard while it moved", m.acked_during_move, at_least=10, context=ctx)
    checkpoint("writers kept writing to the shard after the switch", m.acked_after_switch, at_least=10, context=ctx)
    checkpoint("the move lost no acknowledged row", m.lost, at_most=0, context=ctx)
    checkpoint("the move duplicated no row", m.duplicated, at_most=0, context=ctx)
    checkpoint(
        "after the switch no write went to the old location",
        m.writes_routed_to_old_after_switch + m.old_location_rows_after_switch,
        at_most=0,
        context=ctx,
    )
