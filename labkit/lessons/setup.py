"""Lesson 00 (setup): ask every server of a stack a real question and report what it answered."""
from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd

from labkit.services.stack import Stack


def real_query(st: Stack, name: str) -> str:
    """One real round trip to service `name`: a SQL query, a memcached set+get, a CQL query."""
    svc = st.service(name)
    ep = svc.endpoint
    if svc.kind == "postgres":
        import psycopg

        with psycopg.connect(ep.dsn, connect_timeout=5) as conn:
            return "SELECT 6*7 -> " + str(conn.execute("SELECT 6*7").fetchone()[0])
    if svc.kind == "memcached":
        from pymemcache.client.base import Client

        token = os.urandom(8).hex().encode()
        client = Client(ep.address, connect_timeout=3, timeout=3)
        try:
            client.set("labkit:setup", token, noreply=False)
            got = client.get("labkit:setup")
        finally:
            client.close()
        return f"set+get -> {'same value' if got == token else repr(got)}"
    if svc.kind == "cassandra":
        from cassandra.cluster import Cluster

        cluster = Cluster(ep.contact_points, port=ep.port)
        try:
            row = cluster.connect().execute("SELECT cluster_name, release_version FROM system.local").one()
            return f"system.local -> {row.cluster_name} {row.release_version}"
        finally:
            cluster.shutdown()
    raise ValueError(f"no real query known for {svc.kind}")


def survey(st: Stack) -> pd.DataFrame:
    """A table of every service: provider, address, the server's own version, a real query and its latency."""
    rows: list[dict[str, Any]] = []
    for name, svc in st.services.items():
        start = time.perf_counter()
        try:
            answer, ok = real_query(st, name), True
        except Exception as e:  # noqa: BLE001 - shown in the table: the learner sees what failed
            answer, ok = f"FAILED: {e}", False
        ms = (time.perf_counter() - start) * 1000
        rows.append({"service": name, "provider": svc.provider,
                     "address": f"{svc.endpoint.host}:{svc.endpoint.port}",
                     "version": svc.version() if ok else "?", "real query": answer, "answered": ok,
                     "round trip (ms)": round(ms, 1)})
    return pd.DataFrame(rows).set_index("service")
