"""Cassandra start-up and memory figures for benchmarks/stack_start.py.

    python benchmarks/_cassandra_bench.py [runs] [spec ...]   # prints the table (and the phases) on its own

Each run starts a fresh cluster (new data directories: a cold start of the JVMs and of Cassandra's system
keyspaces) in the light profile. "Ready" is what issue 18 asks for: from the start() call until a fresh driver
session runs a query, and for a cluster until that driver sees every node UP and an RF=<nodes> QUORUM write and
read succeed. Then the idle RSS of every JVM is measured (psutil), a little real work is done (2000 writes), the
RSS again, and everything is stopped.

Where the time goes (median over the runs, from the first node's system.log timestamps and its JVM's start time):
JVM launch to the first log line, configuration and JMX to the system keyspaces, the memtable row-overhead
estimate, the system and schema tables until gossip starts, gossip to "Startup complete", and the rest (our
polling, the other nodes, the peer view and the QUORUM check).
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from datetime import datetime
from typing import Any

import psutil

from labkit.services.cassandra import LocalCassandra
from labkit.services.cassandra.jars import fetch_cassandra

SHAPES = [
    ("single node cold start", "dc1:1"),
    ("3-node cluster ready", "dc1:3"),
    ("2-DC cluster (us:2,eu:1) ready", "us:2,eu:1"),
]
# log lines that mark the phases of one node's start (Cassandra 5.0's own messages)
MARKS = [
    ("jvm+config", "Configured JMX server"),
    ("to system ks", "Initializing system.IndexInfo"),
    ("row overhead", "Estimated SkipListMemtable row overhead"),
    ("system+schema", "Starting up server gossip"),
    ("gossip+join", "Startup complete"),
]
_TS = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def _ready(c: LocalCassandra, timeout: float = 120.0) -> None:
    """Until a fresh session runs a query and, for clusters, sees every node UP and serves RF=n QUORUM."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import Cluster
    from cassandra.query import SimpleStatement

    ep = c.endpoint
    n = len(c.nodes)
    deadline = time.monotonic() + timeout
    while True:
        cl = Cluster(ep.contact_points, port=ep.port, protocol_version=5)
        try:
            s = cl.connect()
            s.execute("SELECT release_version FROM system.local")
            if n == 1:
                return
            if sum(h.is_up for h in cl.metadata.all_hosts()) == n:
                rf = ", ".join(f"'{dc}': {len(a)}" for dc, a in ep.extra["datacenters"].items())
                s.execute(
                    "CREATE KEYSPACE IF NOT EXISTS ready WITH replication = "
                    f"{{'class': 'NetworkTopologyStrategy', {rf}}}"
                )
                s.execute("CREATE TABLE IF NOT EXISTS ready.t (k int PRIMARY KEY, v int)")
                q = ConsistencyLevel.QUORUM
                s.execute(SimpleStatement("INSERT INTO ready.t (k, v) VALUES (1, 1)", consistency_level=q))
                if s.execute(SimpleStatement("SELECT v FROM ready.t WHERE k = 1", consistency_level=q)).one():
                    return
        except Exception:  # noqa: BLE001 - not ready yet: try again until the deadline
            if time.monotonic() > deadline:
                raise
        finally:
            cl.shutdown()
        time.sleep(0.1)


def _phases(c: LocalCassandra, t_call: float) -> dict[str, float]:
    """Seconds per phase of the first node's start (MARKS), and the JVM's spawn after the start() call."""
    node = c.nodes[0]
    text = node.log_path.read_text(errors="replace")
    out: dict[str, float] = {}
    proc = psutil.Process(node.ref["pid"]) if node.ref else None
    prev = proc.create_time() if proc else None
    if prev is not None:
        out["spawn"] = prev - t_call
    for key, needle in MARKS:
        line = next((ln for ln in text.splitlines() if needle in ln), None)
        m = _TS.search(line) if line else None
        if not m or prev is None:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out[key] = t - prev
        prev = t
    if prev is not None:
        out["end"] = prev  # wall time of "Startup complete" of node 1
    return out


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


def _rss(c: LocalCassandra) -> list[float]:
    return [psutil.Process(n.ref["pid"]).memory_info().rss / 2**20 for n in c.nodes if n.ref]


def measure_cassandra(runs: int = 1, shapes: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Rows {"service", "what", "median_s", "min_s", "max_s", "rss_mb", "phases", "load"} per cluster shape,
    plus one row of resident memory per node (median over every node of every run, idle and after 2000 writes)."""
    fetch_cassandra(progress=False)
    rows: list[dict[str, Any]] = []
    idle_all: list[float] = []
    rss_all: list[float] = []
    for what, spec in shapes or SHAPES:
        times, rss, phases, loads, cpu = [], [], [], [], []
        for _ in range(runs):
            loads.append(psutil.getloadavg()[0])
            c = LocalCassandra(f"bench-{spec.replace(':', '').replace(',', '-')}", nodes=spec, profile="light")
            t_call = time.time()
            t0 = time.monotonic()
            try:
                c.start()
                _ready(c)
                t = time.monotonic() - t0
                times.append(t)
                # CPU-seconds of the JVMs until ready: what the start costs, whatever else shares the cores
                cpu.append(sum(sum(psutil.Process(n.ref["pid"]).cpu_times()[:2]) for n in c.nodes if n.ref))
                ph = _phases(c, t_call)
                ph["after node 1"] = t_call + t - ph.pop("end", t_call + t)
                phases.append(ph)
                idle_all += _rss(c)
                _touch(c)
                rss += _rss(c)
            finally:
                c.stop()
                c.remove_data()
        rss_all += rss
        keys = [k for k in phases[0] if all(k in p for p in phases)]
        rows.append(
            {
                "service": "cassandra",
                "what": what,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "rss_mb": statistics.median(rss),
                "cpu_s": statistics.median(cpu),
                "phases": {k: statistics.median(p[k] for p in phases) for k in keys},
                "load": (min(loads), max(loads)),
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
            "idle_rss_mb": statistics.median(idle_all),
            "max_idle_rss_mb": max(idle_all),
        }
    )
    return rows


def phase_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per cluster shape: where its start-up time went (median seconds per phase)."""
    out = []
    for r in rows:
        if r.get("phases"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
            lo, hi = r["load"]
            out.append(
                f"{r['what']}: {parts} (s; JVM CPU until ready {r['cpu_s']:.1f} s in all; "
                f"1-min load {lo:.1f}-{hi:.1f} on {psutil.cpu_count()} cores)"
            )
        elif r.get("idle_rss_mb"):
            out.append(f"idle RSS per node: median {r['idle_rss_mb']:.0f} MB, max {r['max_idle_rss_mb']:.0f} MB")
    return out


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    wanted = [s for s in SHAPES if s[1] in sys.argv[2:]] or SHAPES
    result = measure_cassandra(n, wanted)
    for r in result:
        t = "" if r["median_s"] is None else f"{r['median_s']:6.1f} s (min {r['min_s']:.1f}, max {r['max_s']:.1f})"
        print(f"{r['what']:<62} {t:<32} RSS {r['rss_mb']:5.0f} MB/node")
    print("\n".join(phase_lines(result)))
