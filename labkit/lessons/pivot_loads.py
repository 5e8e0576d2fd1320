"""Lesson 01's loading step: the Burbn event log into Postgres three ways, each timed through labkit.load.

One INSERT per row in autocommit (a commit per row, what naive application code does), ``executemany`` in
batches (one transaction per batch) and ``COPY``; the checkpoint says how far apart they are. The analysis
reads the ``events`` table and its ``events_weekly`` view made here (:mod:`labkit.lessons.pivot`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from labkit.checkpoints import checkpoint
from labkit.datasets import burbn
from labkit.errors import BadParameter
from labkit.services.postgres import fetch_value

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["INSERT_SQL", "SCHEMA", "WEEKLY_VIEW", "check_copy_faster", "load_table", "plot_loads", "time_loads"]

SCHEMA = """
DROP VIEW IF EXISTS events_weekly;
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (event_id bigint NOT NULL, user_id int NOT NULL, ts timestamptz NOT NULL, kind text NOT NULL);
"""


# week number since the log's first Monday; the view saves every query from repeating it
WEEKLY_VIEW = """
CREATE OR REPLACE VIEW events_weekly AS
SELECT event_id, user_id, ts, kind,
       floor(extract(epoch FROM ts - TIMESTAMPTZ '2010-03-01 00:00:00+00') / 604800)::int AS week
FROM events
"""


INSERT_SQL = "INSERT INTO {table} (event_id, user_id, ts, kind) VALUES (%s, %s, %s, %s)"


def load_table(conn: Any, rows: list[tuple[Any, ...]], table: str = "events") -> None:
    """(Re)create ``table`` and COPY ``rows`` into it (untimed: for tests and exercises)."""
    with conn.cursor() as cur:
        cur.execute(SCHEMA.format(table=table))
        with cur.copy(f"COPY {table} (event_id, user_id, ts, kind) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        if table == "events":
            cur.execute(WEEKLY_VIEW)
            cur.execute("ANALYZE events")
    if not conn.autocommit:
        conn.commit()


def time_loads(
    dsn: str,
    log: burbn.BurbnLog,
    *,
    insert_rows: int = 1000,
    batch: int = 1000,
    copy_chunk: int = 10_000,
    max_seconds: float = 20.0,
) -> pd.DataFrame:
    """Load rows three ways, each timed by ``labkit.load.run``; one row per method with rows/s.

    Row INSERT and executemany load a sample (``insert_rows``, and 10x as many in batches) into their own
    tables; COPY loads the whole log into ``events``, the table the analysis reads. Each method runs
    until its rows are in or ``max_seconds`` pass; rows/s counts what was loaded in the time it took.
    """
    import pandas as pd

    from labkit.load import Workload, run
    from labkit.load.drivers import PostgresDriver

    if insert_rows < 1 or batch < 1 or copy_chunk < 1:
        raise BadParameter("insert_rows, batch and copy_chunk must be >= 1 rows")
    rows = log.rows
    drv = PostgresDriver(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in ("events_insert", "events_batch", "events"):
            conn.execute(SCHEMA.format(table=t))
    n_insert = min(insert_rows, len(rows))
    n_batches = max(1, min(len(rows), 10 * insert_rows) // batch)
    n_chunks = -(-len(rows) // copy_chunk)

    def row_insert(ctx: Any, op: Any) -> None:  # one statement, one commit (autocommit)
        ctx.conn.execute(INSERT_SQL.format(table="events_insert"), rows[op.seq])

    def batched(ctx: Any, op: Any) -> None:  # executemany, one transaction per batch
        part = rows[op.seq * batch : (op.seq + 1) * batch]
        with ctx.conn.transaction(), ctx.conn.cursor() as cur:
            cur.executemany(INSERT_SQL.format(table="events_batch"), part)
        ctx.count("rows", len(part))

    def copy(ctx: Any, op: Any) -> None:  # COPY FROM STDIN, one chunk per operation
        part = rows[op.seq * copy_chunk : (op.seq + 1) * copy_chunk]
        with ctx.conn.cursor() as cur, cur.copy("COPY events (event_id, user_id, ts, kind) FROM STDIN") as cp:
            for r in part:
                cp.write_row(r)
        ctx.count("rows", len(part))

    out = []
    for name, fn, n_ops, rows_per_op in (
        ("row INSERT (autocommit)", row_insert, n_insert, 1),
        (f"executemany ({batch} rows/txn)", batched, n_batches, batch),
        ("COPY", copy, n_chunks, copy_chunk),
    ):
        res = run(fn, Workload(clients=1, ops=n_ops, duration=max_seconds), driver=drv, name=name)
        if res.error_count:
            raise RuntimeError(f"{name}: {res.error_count} errors while loading ({res.errors}); {res.notes}")
        loaded = res.counters.get("rows", res.ops * rows_per_op) if rows_per_op > 1 else res.ops
        out.append({"method": name, "rows": int(loaded), "seconds": res.duration, "rows_per_s": loaded / res.duration})
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(WEEKLY_VIEW)
        conn.execute("ANALYZE events")
        n = fetch_value(conn, "SELECT count(*) FROM events")
    if n != len(rows):
        raise RuntimeError(f"COPY loaded {n} rows of {len(rows)}: the run stopped early (max_seconds={max_seconds})")
    return pd.DataFrame(out)


def check_copy_faster(loads: pd.DataFrame, factor: float = 10.0) -> None:
    """COPY loads at least ``factor`` times more rows per second than one INSERT (and commit) per row."""
    rate = dict(zip(loads["method"], loads["rows_per_s"]))
    copy_rate = rate["COPY"]
    row_rate = next(v for k, v in rate.items() if k.startswith("row INSERT"))
    checkpoint(
        f"COPY loads at least {factor:g}x more rows/s than row-by-row INSERT",
        copy_rate / row_rate,
        at_least=factor,
        context=f"COPY {copy_rate:,.0f} rows/s vs row INSERT {row_rate:,.0f} rows/s",
    )


def plot_loads(loads: pd.DataFrame) -> Any:
    """Rows per second per load method (log scale: they differ by orders of magnitude)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    ax.barh(loads["method"], loads["rows_per_s"], color=["C3", "C1", "C2"][: len(loads)])
    ax.set_xscale("log")
    ax.set_xlabel("rows loaded per second (log scale)")
    for i, v in enumerate(loads["rows_per_s"]):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
