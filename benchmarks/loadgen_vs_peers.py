#!/usr/bin/env python
"""labkit's load drivers vs the native peer tools, on the same servers at the same concurrency.

    python benchmarks/loadgen_vs_peers.py --seconds 5 --clients 8 --repeat 3

Postgres: `pgbench -S` (select by primary key on pgbench_accounts) vs labkit's Postgres driver
running the same statement with uniformly random aid. memcached: `memaslap` (called memcaslap in
Debian's libmemcached-tools) vs labkit's memcached driver on the same mix (90% get / 10% set,
64-byte keys, 100-byte values, keys stored beforehand). Each repetition runs peer and labkit
back to back, alternating who goes first, so that drifting machine load hits both alike; the
table gives medians with min-max spread and the ratio labkit/peer.

Latency: labkit's from its HDR histograms; pgbench's from its per-transaction log (sampled);
memaslap only reports a log2 histogram, so its p50/p99 are bucket upper bounds (shown with <=).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import labkit  # noqa: E402
from labkit.errors import BinaryNotFound  # noqa: E402
from labkit.load import Uniform, Workload, drivers, run  # noqa: E402

PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = %s"
MEMASLAP_CFG = """key
64 64 1
value
100 100 1
cmd
0 0.1
1 0.9
"""


def find_memaslap() -> str:
    for name in ("memaslap", "memcaslap"):
        path = shutil.which(name)
        if path:
            return path
    raise BinaryNotFound("memaslap not found: apt-get install libmemcached-tools (it installs memcaslap)")


def find_pgbench() -> str:
    path = shutil.which("pgbench")
    if path:
        return path
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True):
        return cand
    raise BinaryNotFound("pgbench not found: apt-get install postgresql-contrib (or postgresql-client)")


# -- Postgres ---------------------------------------------------------------------------------


def pgbench_init(pgbench: str, dsn: str, scale: int) -> None:
    subprocess.run([pgbench, "-i", "-q", "-s", str(scale), dsn], check=True, capture_output=True, text=True)


def run_pgbench(pgbench: str, dsn: str, clients: int, threads: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="labkit-pgbench-") as tmp:
        out = subprocess.run(
            [
                pgbench,
                "-S",
                "-n",
                "-c",
                str(clients),
                "-j",
                str(threads),
                "-T",
                str(int(seconds)),
                "-l",
                "--sampling-rate=0.2",
                dsn,
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp,
        ).stdout
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        lat_us = []
        for f in Path(tmp).glob("pgbench_log.*"):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    lat_us.append(int(parts[2]))
    lat = np.asarray(lat_us) / 1000.0
    return {
        "ops": tps,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "approx": False,
    }


def run_labkit_pg(st: Any, clients: int, seconds: float, scale: int, processes: int) -> dict[str, float]:
    drv = drivers.postgres(st, engine="pq")
    wl = Workload(keys=Uniform(100_000 * scale), clients=clients, duration=seconds, seed=None)
    res = run(drv.query_op(PGBENCH_SELECT), wl, processes=processes, use_uvloop=True)
    if res.error_count:
        raise RuntimeError(f"labkit Postgres run had errors: {res.summary()}")
    p = res.percentiles()
    return {"ops": res.throughput, "p50": p["p50"], "p99": p["p99"], "approx": False}


# -- memcached --------------------------------------------------------------------------------

KEY_FORMAT = "labkit-bench-key-{:0>47}"  # 64 bytes, like memaslap's keys


def fill_memcached(address: tuple[str, int], n_keys: int) -> None:
    """Store every key once so gets hit, as memaslap's do (its keys were set before they are read)."""
    from pymemcache.client.base import Client

    c = Client(address)
    value = b"v" * 100
    keys = [KEY_FORMAT.format(i) for i in range(n_keys)]
    for i in range(0, n_keys, 1000):
        c.set_many({k: value for k in keys[i : i + 1000]}, noreply=False)
    c.close()


def run_memaslap(
    memaslap: str, address: tuple[str, int], clients: int, threads: int, seconds: float, cfg: str
) -> dict[str, float]:
    out = subprocess.run(
        [
            memaslap,
            "-s",
            f"{address[0]}:{address[1]}",
            "-T",
            str(threads),
            "-c",
            str(clients),
            "-t",
            f"{int(seconds)}s",
            "-S",
            f"{int(seconds)}s",
            "-F",
            cfg,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    tps = float(re.search(r"Run time: [\d.]+s Ops: \d+ TPS: (\d+)", out).group(1))  # type: ignore[union-attr]
    p50 = p99 = float("nan")
    block = out.split("Total Statistics (")[-1] if "Total Statistics (" in out else ""
    dist = re.search(r"Log2 Dist:\s*\n((?:\s+\d+:.*\n)+)", block)
    if dist:
        counts: dict[int, int] = {}
        for row in dist.group(1).strip().splitlines():
            start, vals = row.split(":")
            for i, v in enumerate(vals.split()):
                counts[int(start) + i] = int(v)
        total = sum(counts.values())
        cum = 0
        for exp in sorted(counts):
            cum += counts[exp]
            upper_ms = 2 ** (exp + 1) / 1000.0  # bucket [2^exp, 2^(exp+1)) microseconds
            if np.isnan(p50) and cum >= 0.5 * total:
                p50 = upper_ms
            if np.isnan(p99) and cum >= 0.99 * total:
                p99 = upper_ms
    return {"ops": tps, "p50": p50, "p99": p99, "approx": True}


def run_labkit_mc(
    st: Any, clients: int, seconds: float, n_keys: int, processes: int, share: int | None
) -> dict[str, float]:
    drv = drivers.memcached(st, share=share)
    wl = Workload(
        keys=Uniform(n_keys),
        mix={"get": 0.9, "set": 0.1},
        clients=clients,
        duration=seconds,
        value_size=100,
        key_format=KEY_FORMAT,
        seed=None,
    )
    res = run(drv.get_set_op(count_hits=False), wl, processes=processes, use_uvloop=True)
    if res.error_count:
        raise RuntimeError(f"labkit memcached run had errors: {res.summary()}")
    p = res.percentiles()
    return {"ops": res.throughput, "p50": p["p50"], "p99": p["p99"], "approx": False}


# -- table ------------------------------------------------------------------------------------


def _med(xs: list[float]) -> float:
    xs = [x for x in xs if not np.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def _spread(xs: list[float]) -> str:
    return f"{min(xs):,.0f}-{max(xs):,.0f}"


def table(rows: list[tuple[str, str, list[dict[str, float]]]], ratios: dict[str, list[float]]) -> str:
    head = (
        f"{'workload':<26}{'tool':<22}{'ops/s median':>13}{'(min-max)':>19}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'labkit/peer':>17}"
    )
    lines = [head, "-" * len(head)]
    for workload, tool, runs in rows:
        ops = [r["ops"] for r in runs]
        approx = "<=" if runs[0].get("approx") else ""
        ratio = ""
        if tool.startswith("labkit"):
            rs = ratios[workload]
            ratio = f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"
        lines.append(
            f"{workload:<26}{tool:<22}{_med(ops):>13,.0f}{_spread(ops):>19}"
            f"{approx + format(_med([r['p50'] for r in runs]), '.3f'):>9}"
            f"{approx + format(_med([r['p99'] for r in runs]), '.3f'):>9}{ratio:>17}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement (default 5)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients/connections for every tool (default 8)")
    ap.add_argument("--threads", type=int, default=2, help="pgbench -j / memaslap -T threads (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported (default 3)")
    ap.add_argument("--scale", type=int, default=1, help="pgbench -i scale factor (100k rows each; default 1)")
    ap.add_argument("--keys", type=int, default=10_000, help="memcached key space for labkit (default 10000)")
    ap.add_argument("--pg-processes", type=int, default=1, help="labkit worker processes for Postgres (default 1)")
    ap.add_argument("--mc-processes", type=int, default=2, help="labkit worker processes for memcached (default 2)")
    ap.add_argument(
        "--mc-share",
        type=int,
        default=1,
        help="labkit: the clients of each process share this many pipelined memcached connections "
        "(0 = one each; default 1); requests in flight stay = --clients",
    )
    ap.add_argument("--only", choices=("postgres", "memcached"), help="run one half only")
    args = ap.parse_args(argv)
    if args.seconds < 1 or args.clients < 1 or args.repeat < 1:
        ap.error("--seconds must be >= 1, --clients and --repeat >= 1")

    kinds = ("postgres", "memcached") if args.only is None else (args.only,)
    print(
        f"labkit {labkit.__version__}: {args.clients} clients, {args.seconds:g} s x {args.repeat} repetitions, "
        f"{os.cpu_count()} CPUs shared by clients and servers",
        flush=True,
    )
    rows: list[tuple[str, str, list[dict[str, float]]]] = []
    ratios: dict[str, list[float]] = {}
    with labkit.stack(*kinds) as st:
        if "postgres" in kinds:
            pgbench, dsn = find_pgbench(), st.endpoint("postgres").dsn
            t = time.monotonic()
            pgbench_init(pgbench, dsn, args.scale)
            print(f"pgbench -i -s {args.scale}: {time.monotonic() - t:.1f} s", flush=True)
            peer, mine = [], []
            for i in range(args.repeat):
                order = [0, 1] if i % 2 == 0 else [1, 0]
                for who in order:
                    if who == 0:
                        peer.append(run_pgbench(pgbench, dsn, args.clients, args.threads, args.seconds))
                    else:
                        mine.append(run_labkit_pg(st, args.clients, args.seconds, args.scale, args.pg_processes))
                print(
                    f"  postgres rep {i + 1}: pgbench {peer[-1]['ops']:,.0f}/s, labkit {mine[-1]['ops']:,.0f}/s",
                    flush=True,
                )
            wl = "pg select by primary key"
            rows += [(wl, f"pgbench -S -j{args.threads}", peer), (wl, f"labkit pq x{args.pg_processes}p", mine)]
            ratios[wl] = [m["ops"] / p["ops"] for m, p in zip(mine, peer)]
        if "memcached" in kinds:
            memaslap, address = find_memaslap(), st.endpoint("memcached").address
            fill_memcached(address, args.keys)
            peer, mine = [], []
            with tempfile.NamedTemporaryFile("w", suffix=".cfg", prefix="labkit-memaslap-", delete=False) as f:
                f.write(MEMASLAP_CFG)
                cfg = f.name
            try:
                for i in range(args.repeat):
                    order = [0, 1] if i % 2 == 0 else [1, 0]
                    for who in order:
                        if who == 0:
                            peer.append(run_memaslap(memaslap, address, args.clients, args.threads, args.seconds, cfg))
                        else:
                            mine.append(
                                run_labkit_mc(
                                    st, args.clients, args.seconds, args.keys, args.mc_processes, args.mc_share or None
                                )
                            )
                    print(
                        f"  memcached rep {i + 1}: memaslap {peer[-1]['ops']:,.0f}/s, labkit {mine[-1]['ops']:,.0f}/s",
                        flush=True,
                    )
            finally:
                os.unlink(cfg)
            wl = "mc 90% get / 10% set"
            share = f" share{args.mc_share}" if args.mc_share else ""
            rows += [
                (wl, f"{Path(memaslap).name} -T{args.threads}", peer),
                (wl, f"labkit meta x{args.mc_processes}p{share}", mine),
            ]
            ratios[wl] = [m["ops"] / p["ops"] for m, p in zip(mine, peer)]
    print()
    print(table(rows, ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
