"""Lesson 00 (setup): ask every server of a stack a real question and report what it answered.

Connecting and asking are timed apart: opening a connection (TCP, and for Postgres the password
exchange; for Cassandra the driver's discovery of the cluster) costs far more than one question on
an open connection, and later lessons compare round trips (a memcached hit, a Postgres read), not
connects. The round trip is the median of ``repeats`` questions on the same connection.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from labkit.errors import BadParameter
from labkit.services.stack import Stack

__all__ = ["MAX_REPEATS", "plot_times", "real_query", "survey", "view_survey"]

MAX_REPEATS = 1000


def _timed(ask: Callable[[], str], repeats: int) -> tuple[str, list[float]]:
    times, answer = [], ""
    for _ in range(repeats):
        t = time.perf_counter()
        answer = ask()
        times.append((time.perf_counter() - t) * 1000)
    return answer, times


def real_query(st: Stack, name: str, repeats: int = 1) -> tuple[str, float, list[float]]:
    """Connect to service ``name`` and ask it a real question ``repeats`` times on that connection.

    Returns (the last answer, connect time in ms, each round trip in ms): a SQL query for Postgres,
    a set+get of a random value for memcached, a CQL query on ``system.local`` for Cassandra.
    """
    svc = st.service(name)
    ep = svc.endpoint
    # imports first: a first import inside the timing would read as a slow connect
    import psycopg
    from cassandra.cluster import Cluster

    from labkit.memcache_meta import MetaClient

    t0 = time.perf_counter()
    if svc.kind == "postgres":
        with psycopg.connect(str(ep.dsn), connect_timeout=5) as conn:
            connect_ms = (time.perf_counter() - t0) * 1000

            def select() -> str:
                row = conn.execute("SELECT 6*7").fetchone()
                return f"SELECT 6*7 -> {row[0] if row else None}"

            answer, times = _timed(select, repeats)
        return answer, connect_ms, times
    if svc.kind == "memcached":
        with MetaClient(ep.address, timeout=3) as mc:
            connect_ms = (time.perf_counter() - t0) * 1000

            def set_get() -> str:
                token = os.urandom(8).hex().encode()
                mc.set("labkit:setup", token)
                got = mc.get("labkit:setup").value
                return f"set+get -> {'same value' if got == token else repr(got)}"

            answer, times = _timed(set_get, repeats)
        return answer, connect_ms, times
    if svc.kind == "cassandra":
        cluster = Cluster(ep.contact_points, port=ep.port)
        try:
            session = cluster.connect()
            connect_ms = (time.perf_counter() - t0) * 1000

            def ask() -> str:
                row = session.execute("SELECT cluster_name, release_version FROM system.local").one()
                return f"system.local -> {row.cluster_name} {row.release_version}"

            answer, times = _timed(ask, repeats)
        finally:
            cluster.shutdown()
        return answer, connect_ms, times
    raise BadParameter(f"no real query known for {svc.kind}: the setup lesson knows postgres, memcached, cassandra")


def survey(st: Stack, repeats: int = 5) -> pd.DataFrame:
    """A table of every service: provider, address, the server's own version, a real query, the time
    to connect and the median round trip of ``repeats`` questions on the open connection."""
    if not 1 <= repeats <= MAX_REPEATS:
        raise BadParameter(f"repeats={repeats}: ask each server between 1 and {MAX_REPEATS} times")
    rows: list[dict[str, Any]] = []
    for name, svc in st.services.items():
        try:
            answer, connect_ms, times = real_query(st, name, repeats)
            ok = True
        except Exception as e:  # noqa: BLE001 - shown in the table: the learner sees what failed
            answer, connect_ms, times, ok = f"FAILED: {e}", float("nan"), [], False
        rows.append(
            {
                "service": name,
                "provider": svc.provider,
                "address": f"{svc.endpoint.host}:{svc.endpoint.port}",
                "version": svc.version() if ok else "?",
                "real query": answer,
                "answered": ok,
                "connect (ms)": round(connect_ms, 2),
                "round trip (ms, median)": round(statistics.median(times), 3) if times else float("nan"),
                "round trips": len(times),
            }
        )
    return pd.DataFrame(rows).set_index("service")


def plot_times(table: pd.DataFrame) -> Any:
    """Connect time and median round trip per service, in ms on a log scale (they differ by 10-1000x)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.7 * len(table)))
    pos = np.arange(len(table))
    ax.barh(pos - 0.2, table["connect (ms)"], 0.4, label="connect")
    ax.barh(
        pos + 0.2,
        table["round trip (ms, median)"],
        0.4,
        label=f"round trip (median of {int(table['round trips'].max())})",
    )
    ax.set_yticks(pos, table.index)
    ax.set_xscale("log")
    ax.set_xlabel("time (ms, log scale)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x", which="both")
    fig.tight_layout()
    return fig


def view_survey(table: pd.DataFrame) -> list[Any]:
    """What the setup panel shows after each run: the table, then the times as bars."""
    return [table, plot_times(table)] if table["answered"].any() else [table]
