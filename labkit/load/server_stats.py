"""What the server saw: counter deltas from memcached ``stats`` and Postgres statistics views.

    watch = [MemcachedStats(st), PostgresStats(st)]
    result = run(op, wl, watch=watch)
    result.server["memcached"]["get_hits"], result.server["postgres"]["xact_commit"]

Or by hand: ``before = w.snapshot(); ...; w.delta(before, w.snapshot())``.
"""

from __future__ import annotations

from typing import Any

from labkit.errors import BadParameter

__all__ = ["MemcachedStats", "PostgresStats", "memcached_stats", "postgres_stats"]

# memcached counters that only grow: report the difference. Gauges: report the value after.
_MC_COUNTERS = (
    "cmd_get",
    "cmd_set",
    "cmd_touch",
    "get_hits",
    "get_misses",
    "get_expired",
    "get_flushed",
    "delete_hits",
    "delete_misses",
    "cas_hits",
    "cas_misses",
    "cas_badval",
    "evictions",
    "reclaimed",
    "expired_unfetched",
    "evicted_unfetched",
    "bytes_read",
    "bytes_written",
    "total_connections",
    "rejected_connections",
    "total_items",
    "conn_yields",
)
_MC_GAUGES = ("curr_items", "curr_connections", "bytes", "limit_maxbytes", "threads")

_PG_DB_COLUMNS = (
    "xact_commit",
    "xact_rollback",
    "blks_read",
    "blks_hit",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "conflicts",
    "deadlocks",
    "temp_bytes",
)


def _target(target: Any, kind: str) -> Any:
    if hasattr(target, "endpoint") and callable(target.endpoint):
        return target.endpoint(kind)
    return target


def memcached_stats(target: Any) -> dict[str, float]:
    """memcached's ``stats`` as numbers (non-numeric values such as version are dropped)."""
    from labkit.memcache_meta import MetaClient

    with MetaClient(_target(target, "memcached"), timeout=3.0) as mc:
        raw = mc.stats()
    out: dict[str, float] = {}
    for k, v in raw.items():
        try:
            out[k] = float(v) if "." in v else int(v)
        except ValueError:
            continue
    return out


class MemcachedStats:
    """Snapshots of memcached ``stats``; ``delta`` gives counter differences, gauges as after,
    and the server-side hit ratio of the interval."""

    def __init__(self, target: Any, name: str = "memcached") -> None:
        self.target = _target(target, "memcached")
        self.name = name

    def snapshot(self) -> dict[str, float]:
        return memcached_stats(self.target)

    def delta(self, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        d: dict[str, float] = {k: after.get(k, 0) - before.get(k, 0) for k in _MC_COUNTERS if k in after}
        d.update({k: after[k] for k in _MC_GAUGES if k in after})
        gets = d.get("get_hits", 0) + d.get("get_misses", 0)
        d["hit_ratio"] = d.get("get_hits", 0) / gets if gets else float("nan")
        if "uptime" in after and "uptime" in before:
            d["seconds"] = after["uptime"] - before["uptime"]
        return d


def postgres_stats(target: Any, *, statements: int = 10) -> dict[str, Any]:
    """pg_stat_database for the connected database, plus the top statements by calls from
    pg_stat_statements when the extension is available (it needs shared_preload_libraries)."""
    import psycopg

    ep = _target(target, "postgres")
    dsn = ep if isinstance(ep, str) else getattr(ep, "dsn", None)
    if not dsn:
        raise BadParameter(f"{target!r} is not a Postgres endpoint: pass st.endpoint('postgres') or a DSN")
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        # stats are collected per transaction and flushed lazily; ask for a fresh snapshot
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            f"SELECT {', '.join(_PG_DB_COLUMNS)} FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        out.update({c: int(v or 0) for c, v in zip(_PG_DB_COLUMNS, row or ())})
        out["statements"] = None
        try:
            has = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
            if not has:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            rows = conn.execute(
                "SELECT queryid, query, calls, total_exec_time, rows FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "ORDER BY calls DESC LIMIT %s",
                (statements * 5,),
            ).fetchall()
            out["statements"] = {
                r[0]: {"query": r[1], "calls": int(r[2]), "total_ms": float(r[3]), "rows": int(r[4])} for r in rows
            }
        except psycopg.Error:
            out["statements"] = None  # not preloaded or not installed: database-level stats only
    return out


class PostgresStats:
    """Snapshots of Postgres statistics; ``delta`` gives per-database counter differences and,
    with pg_stat_statements, the statements the run executed (calls, mean ms)."""

    def __init__(self, target: Any, name: str = "postgres", statements: int = 10) -> None:
        self.target = _target(target, "postgres")
        self.name = name
        self.statements = statements

    def snapshot(self) -> dict[str, Any]:
        return postgres_stats(self.target, statements=self.statements)

    def delta(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        d: dict[str, Any] = {c: after.get(c, 0) - before.get(c, 0) for c in _PG_DB_COLUMNS}
        reads = d["blks_read"] + d["blks_hit"]
        d["cache_hit_ratio"] = d["blks_hit"] / reads if reads else float("nan")
        if after.get("statements") is not None:
            prev = before.get("statements") or {}
            top = []
            for qid, s in after["statements"].items():
                p = prev.get(qid, {"calls": 0, "total_ms": 0.0, "rows": 0})
                calls = s["calls"] - p["calls"]
                if calls > 0:
                    ms = s["total_ms"] - p["total_ms"]
                    top.append(
                        {"query": s["query"], "calls": calls, "mean_ms": ms / calls, "rows": s["rows"] - p["rows"]}
                    )
            top.sort(key=lambda x: -x["calls"])
            d["statements"] = top[: self.statements]
        return d
