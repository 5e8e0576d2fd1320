"""Lesson 08, part 3 — take the slow part off the request path: done inline vs enqueued to the task queue.

A sync server (gunicorn, ``web_workers`` sync workers, started for this part) answers ``/notify`` two ways.
Inline: the handler calls the slow service itself (a push notification, an image resize: ``task_ms`` of
waiting) and answers after it. Queued: the handler INSERTs a task row into Postgres and answers at once;
task-queue workers (``labkit.lessons.task_queue``, real processes) take the rows with ``FOR UPDATE SKIP
LOCKED`` and make the same call later. Open-loop load at the same rate on both; afterwards the queue is
drained and counted, so "done later" is checked, not assumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import task_queue as tq
from labkit.lessons.async_io import IoRun, Servers, io_run
from labkit.services.postgres import fetch_value

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["OffloadResult", "check_offload", "offload_compare", "plot_offload", "table_offload", "view_offload"]


@dataclass
class OffloadResult:
    """Both runs, and what the queue's tables say once the workers have drained it."""

    inline: IoRun
    queued: IoRun
    task_ms: float
    queue_workers: int
    enqueued: int  # task rows the queued requests inserted
    done: int  # tasks a worker completed (task_results has one row per task: none twice)
    left: int  # still queued when the drain deadline passed
    drain_s: float  # from the end of the queued run until the last task was done
    lag_ms: list[float]  # per task: done_at - created_at
    done_at_s: list[float]  # per task: seconds after the first enqueue

    @property
    def answered(self) -> int:
        """Queued requests that got their 200 (their INSERT had committed)."""
        return self.queued.result.ops


def offload_compare(
    servers: Servers,
    *,
    task_ms: float = 200,
    utilization: float = 0.5,
    queue_workers: int = 3,
    web_workers: int = 4,
    duration: float = 5.0,
    clients: int = 32,
    seed: int = 0,
    timeout: float = 60.0,
) -> OffloadResult:
    """Open-loop load on ``/notify`` of a sync server with ``web_workers`` workers, at ``utilization`` x what
    they can do inline (``web_workers / task_ms``): first inline, then queued, with ``queue_workers`` task
    workers making the slow call. The server and the task workers are stopped at the end."""
    import psycopg

    if task_ms <= 0 or not 0 < utilization <= 2 or queue_workers < 1 or web_workers < 1 or duration <= 0:
        raise BadParameter(
            "need task_ms > 0, 0 < utilization <= 2, queue_workers >= 1, web_workers >= 1 and duration > 0 "
            f"(got {task_ms}, {utilization}, {queue_workers}, {web_workers}, {duration})"
        )
    st = servers.st
    dsn = st.endpoint("postgres").dsn
    tq.reset(dsn)
    rate = utilization * web_workers / (task_ms / 1000)
    dep = f"{servers.dep.endpoint.host}:{servers.dep.endpoint.port}"
    names = [f"offload-worker-{i + 1}" for i in range(queue_workers)]
    inline_path = f"/notify?mode=inline&ms={round(task_ms)}&post="
    try:
        web = st.add("web", name="notify", provider="local", server="gunicorn", workers=web_workers, env=servers.env)
        for n in names:
            st.add(
                "worker",
                name=n,
                provider="local",
                module="labkit.lessons.task_queue",
                args=[dsn, n, task_ms, "--dep", dep],
            )

        def load(mode: str, path: Callable[[Any], str]) -> IoRun:  # the same open-loop load for both modes
            return io_run(
                web,
                mode,
                path=path,
                rate=rate,
                duration=duration,
                clients=clients,
                dep_ms=task_ms,
                workers=web_workers,
                seed=seed,
            )

        inline = load("inline", lambda op: f"{inline_path}{op.rank + 1}")
        queued = load("queued", lambda op: f"/notify?mode=queue&post={op.rank + 1}")
        t_end = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = t_end + timeout
            while True:
                row = conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'done') FROM tasks").fetchone()
                enq, done = row if row is not None else (0, 0)  # an aggregate always returns its one row
                if done >= enq or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            drain_s = time.monotonic() - t_end
            results = fetch_value(conn, "SELECT count(*) FROM task_results")
            rows = conn.execute(
                "SELECT extract(epoch FROM done_at - created_at) * 1000, "
                "extract(epoch FROM done_at - min(created_at) OVER ()) "
                "FROM tasks WHERE status = 'done' ORDER BY done_at"
            ).fetchall()
    finally:
        for n in ["notify", *names]:
            if n in st.services:
                st.remove(n)
    return OffloadResult(
        inline,
        queued,
        task_ms,
        queue_workers,
        enqueued=int(enq),
        done=int(results),
        left=int(enq - done),
        drain_s=drain_s,
        lag_ms=[float(r[0]) for r in rows],
        done_at_s=[float(r[1]) for r in rows],
    )


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def table_offload(res: OffloadResult) -> pd.DataFrame:
    """Per mode: the request's latency, and for the queued mode when the slow part was actually done."""
    import pandas as pd

    rows = []
    for r in (res.inline, res.queued):
        p = r.result.percentiles()
        queued = r is res.queued
        rows.append(
            {
                "slow part": "inline (in the request)" if not queued else f"queued ({res.queue_workers} workers)",
                "slow work (ms)": res.task_ms,
                "offered (req/s)": r.rate,
                "answered": r.result.ops,
                "request p50 (ms)": p["p50"],
                "request p99 (ms)": p["p99"],
                "tasks enqueued": res.enqueued if queued else None,
                "tasks done": res.done if queued else None,
                "enqueue → done p50 (ms)": _pct(res.lag_ms, 50) if queued else None,
                "enqueue → done p99 (ms)": _pct(res.lag_ms, 99) if queued else None,
            }
        )
    return pd.DataFrame(rows).set_index("slow part").round(1)


def plot_offload(res: OffloadResult) -> Any:
    """Request latency percentiles per mode; tasks done over time (the queue drains)."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, r in (("inline", res.inline), ("queued", res.queued)):
        p = r.result.percentiles()
        a.plot(["p50", "p90", "p99"], [p["p50"], p["p90"], p["p99"]], marker="o", label=f"{name} request")
    a.axhline(res.task_ms, ls=":", color="grey", label="the slow work itself")
    a.set_yscale("log")
    a.set_ylabel("request latency from arrival (ms, log)")
    a.legend()
    b.plot(res.done_at_s, range(1, len(res.done_at_s) + 1), color="tab:green", label="tasks done")
    b.axhline(res.enqueued, ls="--", color="grey", label=f"tasks enqueued ({res.enqueued})")
    b.set_xlabel("seconds since the first enqueue")
    b.set_ylabel("tasks done (cumulative)")
    b.legend()
    fig.suptitle(
        f"/notify on {res.inline.workers} sync workers at {res.inline.rate:.0f} req/s, slow work {res.task_ms:g} ms, "
        f"{res.queue_workers} queue workers"
    )
    fig.tight_layout()
    return fig


def view_offload(res: OffloadResult) -> list[Any]:
    """The panel's view: the table and the plots."""
    return [table_offload(res), plot_offload(res)]


def check_offload(res: OffloadResult, factor: float = 5.0, p99_factor: float = 2.0) -> None:
    """Claims: queued requests answer ``factor`` x faster at p50 than inline ones and ``p99_factor`` x faster at
    p99 (both ratios from runs at the same rate on the same server), and every enqueued task is done by a
    worker (0 lost, none left queued)."""
    if res.answered == 0 or res.inline.result.ops == 0:
        raise CheckpointFailed(
            f"no request was answered ({res.inline.result.ops} inline, {res.answered} queued): "
            "is the sync server up? (run the Setup cell again)"
        )
    pi, pq = res.inline.result.percentiles(), res.queued.result.percentiles()
    ctx = f"/notify at {res.inline.rate:.1f} req/s, slow work {res.task_ms:g} ms, {res.queue_workers} queue workers"
    checkpoint(
        f"offloading to the queue cuts the request's p50 at least {factor:g}x",
        pi["p50"] / max(pq["p50"], 1e-9),
        at_least=factor,
        context=f"{ctx}: inline p50 {pi['p50']:.1f} ms, queued p50 {pq['p50']:.1f} ms",
    )
    checkpoint(
        f"offloading to the queue cuts the request's p99 at least {p99_factor:g}x",
        pi["p99"] / max(pq["p99"], 1e-9),
        at_least=p99_factor,
        context=f"{ctx}: inline p99 {pi['p99']:.1f} ms, queued p99 {pq['p99']:.1f} ms",
    )
    checkpoint(
        "every enqueued task is done by a queue worker (0 lost)",
        max(res.enqueued, res.answered) - res.done,
        at_most=0,
        context=f"{ctx}: {res.answered} requests answered, {res.enqueued} tasks enqueued, {res.done} done, "
        f"{res.left} still queued after {res.drain_s:.1f} s",
    )
