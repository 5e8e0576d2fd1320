"""Cassandra start-up and memory figures for benchmarks/stack_start.py.

    python benchmarks/_cassandra_bench.py [runs]     # prints the table on its own

Each run starts fresh clusters (new data directories: a cold start of the JVMs and of Cassandra's system
keyspaces) in the light profile, waits until every node serves CQL (and, for clusters, sees all its peers),
writes a few rows, then measures each JVM's resident memory (psutil RSS) and stops everything.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import psutil

from labkit.services.cassandra import LocalCassandra
from labkit.services.cassandra.jars import fetch_cassandra

SHAPES = [
    ("single node cold start", "dc1:1"),
    ("3-node cluster ready", "dc1:3"),
    ("2-DC cluster (us:2,eu:1) ready", "us:2,eu:1"),
]


def _touch(c: LocalCassandra) -> None:
    """A little real work, so RSS is measured on a node that has served writes and reads, not an idle one."""
    from cassandra.cluster import Cluster

    ep = c.endpoint
    cl = Cluster(ep.contact_points, port=ep.port, protocol_version=5)
    try:
        s = cl.connect()
        rf = ", ".join(f"'{dc}': {len(a)}" for dc, a in ep.extra["datacenters"].items())
        s.execute(
            f"CREATE KEYSPACE IF NOT EXISTS bench WITH replication = {{'class': 'NetworkTopologyStrategy', {rf}}}"
        )
        s.execute("CREATE TABLE IF NOT EXISTS bench.t (id int PRIMARY KEY, v text)")
        ins = s.prepare("INSERT INTO bench.t (id, v) VALUES (?, ?)")
        for i in range(2000):
            s.execute(ins, (i, "x" * 100))
        assert s.execute("SELECT count(*) FROM bench.t").one()[0] == 2000
    finally:
        cl.shutdown()


def measure_cassandra(runs: int = 1) -> list[dict[str, Any]]:
    """Rows {"service", "what", "median_s", "min_s", "max_s", "rss_mb"} for the three cluster shapes, plus
    one row of resident memory per node (median over every node of every run)."""
    fetch_cassandra(progress=False)
    rows: list[dict[str, Any]] = []
    rss_all: list[float] = []
    for what, spec in SHAPES:
        times, rss = [], []
        for _ in range(runs):
            c = LocalCassandra(f"bench-{spec.replace(':', '').replace(',', '-')}", nodes=spec, profile="light")
            t0 = time.monotonic()
            try:
                c.start()
                times.append(time.monotonic() - t0)
                _touch(c)
                rss += [psutil.Process(n.ref["pid"]).memory_info().rss / 2**20 for n in c.nodes]
            finally:
                c.stop()
                c.remove_data()
        rss_all += rss
        rows.append(
            {
                "service": "cassandra",
                "what": what,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "rss_mb": statistics.median(rss),
            }
        )
    rows.append(
        {
            "service": "cassandra",
            "what": "resident memory per node (light profile, after 2000 writes)",
            "median_s": None,
            "min_s": None,
            "max_s": None,
            "rss_mb": statistics.median(rss_all),
            "max_rss_mb": max(rss_all),
        }
    )
    return rows


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    for r in measure_cassandra(n):
        t = "" if r["median_s"] is None else f"{r['median_s']:6.1f} s (min {r['min_s']:.1f}, max {r['max_s']:.1f})"
        print(f"{r['what']:<62} {t:<32} RSS {r['rss_mb']:5.0f} MB/node")
