"""Lesson 02 -- the limits of vertical scaling: one Postgres, more clients, more CPU, more money.

The experiment is a pgbench-like mix on a real Postgres (pgbench's four tables; a read is pgbench's
``-S`` lookup of one account, a write is its TPC-B-like transaction -- account, teller and branch
updates plus a history insert -- as one statement), driven by ``labkit.load`` with N closed-loop
clients. Each client spends ``think_ms`` between transactions (application work: rendering, network),
so a few clients cannot saturate the server by themselves and the curve has room to rise.

- :func:`client_sweep`: throughput against the number of clients, optionally with the server's CPU
  capped by a real cgroup (``labkit.cgroups.CpuLimit`` on the postmaster: every backend is forked from
  it, so every backend is capped too).
- :func:`cpu_sweep`: throughput at a fixed client count against the CPU the server may use.
- The Universal Scalability Law (:mod:`labkit.lessons.usl`) fitted to our points and to a published
  pgbench table, and :func:`cost_table`: what a throughput costs on bigger machines of a public price list.

Connections are opened before the clock starts (pgbench also reports tps "without initial connection
time"), so a sweep measures transactions, not connection storms.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from labkit import cgroups
from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter, CheckpointFailed, LabkitError
from labkit.lessons import usl
from labkit.load import Uniform, Workload, run
from labkit.load.drivers import Driver, PqConnection

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DATASETS",
    "cap_status",
    "check_cost_rises",
    "check_knee",
    "check_n_star",
    "check_published_peak",
    "check_usl_fit",
    "client_sweep",
    "clients_up_to",
    "cost_table",
    "cpu_cap",
    "cpu_sweep",
    "defaults",
    "efficiency",
    "measure",
    "plot_cost",
    "plot_cpu",
    "plot_sweep",
    "prepare",
    "prices",
    "published",
    "server_pid",
    "sleep_sweep",
]

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
PUBLISHED_CSV = "pgbench-pg91-select-only-haas.csv"
PRICES_CSV = "aws-ec2-m5-on-demand-us-east-1.csv"

READ_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = %s"
WRITE_SQL = """WITH a AS (UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s RETURNING abalance),
t AS (UPDATE pgbench_tellers SET tbalance = tbalance + %s WHERE tid = %s),
b AS (UPDATE pgbench_branches SET bbalance = bbalance + %s WHERE bid = %s),
h AS (INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (%s, %s, %s, %s, now()))
SELECT abalance FROM a"""
ACCOUNTS_PER_BRANCH = 100_000


def defaults() -> dict[str, Any]:
    """The notebook's knobs for the current profile."""
    from labkit import profile

    return {
        "max_clients": 64,
        # long enough for five interleaved rounds per client count: under a 0.05-core cap a single short
        # round at 32+ clients can stall for most of its length, and the best of five is a stable estimate
        "duration": profile.pick(6.0, 3.0),
        "read_ratio": 1.0,
        "think_ms": 20.0,
        "cpu_limit": 0.05,
        "scale": int(profile.pick(4, 1)),
        "sweep_clients": 16,
        "cpus": [0.05, 0.1, 0.25, 0.5, 1.0],
    }


def prepare(dsn: str, scale: int = 1) -> int:
    """(Re)create pgbench's tables at ``scale`` (100 000 accounts per branch); returns the account count."""
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 100:
        raise BadParameter(f"scale={scale!r}: pgbench's scale factor is an integer 1..100 (100 000 accounts each)")
    stmts = [
        "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history",
        "CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int NOT NULL, filler char(88))",
        "CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int NOT NULL, tbalance int NOT NULL, filler char(84))",
        "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84))",
        "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))",
        f"INSERT INTO pgbench_branches SELECT b, 0, '' FROM generate_series(1, {scale}) b",
        f"INSERT INTO pgbench_tellers SELECT t, (t - 1) / 10 + 1, 0, '' FROM generate_series(1, {10 * scale}) t",
        f"INSERT INTO pgbench_accounts SELECT a, (a - 1) / {ACCOUNTS_PER_BRANCH} + 1, 0, '' "
        f"FROM generate_series(1, {ACCOUNTS_PER_BRANCH * scale}) a",
        "VACUUM ANALYZE",
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in stmts:
            conn.execute(s)
    return ACCOUNTS_PER_BRANCH * scale


class _WarmPostgres(Driver):
    """Hands the runner connections opened in advance and takes them back after each run (lean libpq path)."""

    kind = "postgres"

    def __init__(self, dsn: str, n: int) -> None:
        self.dsn = dsn
        # synchronous_commit=off: a commit does not wait for the WAL to reach the disk, so the lesson
        # measures the server's CPU and locks, not the (shared, noisy) disk's flush time -- lesson 01
        # already showed what a flush per commit costs
        self.free = [self._open() for _ in range(n)]
        self.all = list(self.free)

    def _open(self) -> PqConnection:
        return PqConnection(psycopg.connect(self.dsn, autocommit=True, options="-c synchronous_commit=off"))

    async def aconnect(self) -> Any:
        if not self.free:
            raise BadParameter("more clients than warm connections: open the driver with enough connections")
        return self.free.pop()

    async def aclose(self, conn: Any) -> None:
        conn._detach()  # the next run brings its own event loop
        if getattr(conn, "lk_broken", False) or conn.pg.status != psycopg.pq.ConnStatus.OK:
            # a broken connection (server restarted, backend killed) is replaced, never handed out again
            with contextlib.suppress(Exception):
                conn.conn.close()
            with contextlib.suppress(Exception):
                conn = self._open()
                self.all.append(conn)
            if conn.pg.status != psycopg.pq.ConnStatus.OK:
                return
        self.free.append(conn)

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, (OSError, psycopg.OperationalError, psycopg.InterfaceError))

    def close_all(self) -> None:
        for c in self.all:
            with contextlib.suppress(Exception):
                c.conn.close()


def _transaction(accounts: int, think_s: float) -> Callable[..., Any]:
    tellers = max(1, accounts // ACCOUNTS_PER_BRANCH * 10)

    async def tx(ctx: Any, op: Any) -> None:
        aid = op.rank + 1
        try:
            if op.kind == "read":
                await ctx.conn.fetch(READ_SQL, (aid,))
            else:
                delta, tid = op.seq % 10_001 - 5_000, op.rank % tellers + 1
                bid = (tid - 1) // 10 + 1
                await ctx.conn.fetch(WRITE_SQL, (delta, aid, delta, tid, delta, bid, tid, bid, aid, delta))
        except (OSError, psycopg.OperationalError, asyncio.CancelledError):
            # the warm driver replaces it when the runner hands it back: a broken connection, or one whose
            # query was cancelled mid-flight (a client still stuck at the end of a run) and may still be busy
            ctx.conn.lk_broken = True
            raise
        if think_s > 0:
            await asyncio.sleep(think_s)

    return tx


def server_pid(st: Any, name: str = "postgres") -> int | None:
    """The postmaster's PID when the server is a local process of this machine (else None)."""
    pids = st.service(name).pids()
    return int(pids[0]["pid"]) if pids else None


def cap_status(pid: int | None) -> tuple[bool, str]:
    """Can this notebook cap the server's CPU here? (True, "") or (False, why, in words)."""
    if pid is None:
        return (
            False,
            "the Postgres server is not a local process (Docker or external): its CPU cannot be capped from here",
        )
    return cgroups.available("cpu")


@contextlib.contextmanager
def cpu_cap(pid: int | None, cpus: float | None) -> Iterator[Any]:
    """Cap the server's whole process tree to ``cpus`` cores for the ``with`` block (None: no cap)."""
    if cpus is None:
        yield None
        return
    ok, why = cap_status(pid)
    if not ok:
        raise LabkitError(f"cannot cap the server's CPU: {why}")
    with cgroups.CpuLimit("lesson02-postgres", cpus=float(cpus)) as cap:
        cap.add_tree(int(pid))  # type: ignore[arg-type]
        yield cap


def measure(
    driver: _WarmPostgres,
    accounts: int,
    clients: int,
    *,
    duration: float,
    read_ratio: float,
    think_ms: float,
    fn: Callable[..., Any] | None = None,
    name: str = "pgbench-like",
) -> dict[str, Any]:
    """One closed-loop run; throughput in transactions/s and latency percentiles in ms."""
    if not 0 <= read_ratio <= 1:
        raise BadParameter(f"read_ratio={read_ratio!r}: the share of read transactions is in [0, 1]")
    if think_ms < 0:
        raise BadParameter(f"think_ms={think_ms!r}: think time between transactions must be >= 0 ms")
    op = fn or _transaction(accounts, think_ms / 1000)
    wl = Workload(
        keys=Uniform(accounts),
        mix={"read": read_ratio, "write": 1 - read_ratio},
        clients=clients,
        duration=duration,
        seed=clients,
    )
    res = run(op, wl, driver=driver, name=name, use_uvloop=True)
    hist = res.histogram  # two percentiles straight from the HDR histogram (the full summary is slow)
    p50, p99 = (hist.get_value_at_percentile(q) / 1000 if res.ops else math.nan for q in (50, 99))
    return {
        "clients": clients,
        "tps": res.throughput,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": res.error_count,
        "ops": res.ops,
        "error_kinds": dict(res.errors),
    }


def _sweep_clients(clients: list[int]) -> list[int]:
    if not clients or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in clients):
        raise BadParameter(f"clients={clients!r}: give client counts as integers >= 1, e.g. [1, 2, 4, 8, 16, 32, 64]")
    if max(clients) > 150:
        raise BadParameter(f"{max(clients)} clients: at most 150 (the lab's Postgres allows 200 connections)")
    return sorted(set(clients))


def clients_up_to(max_clients: int) -> list[int]:
    """1, 2, 4, ... up to ``max_clients`` (included): the sweep's client counts."""
    if isinstance(max_clients, bool) or not isinstance(max_clients, int) or not 8 <= max_clients <= 150:
        raise BadParameter(f"max_clients={max_clients!r}: sweep up to 8..150 clients (the USL needs 4 points or more)")
    out = [1]
    while out[-1] * 2 < max_clients:
        out.append(out[-1] * 2)
    return out + [max_clients]


def client_sweep(
    dsn: str,
    accounts: int,
    clients: list[int],
    *,
    duration: float,
    read_ratio: float = 1.0,
    think_ms: float = 20.0,
    cpu_limit: float | None = None,
    pid: int | None = None,
    rounds: int = 5,
    progress: Callable[[Any], Any] | None = None,
) -> pd.DataFrame:
    """Throughput at each client count, with the server capped to ``cpu_limit`` cores (None: uncapped).

    Each client count is measured ``rounds`` times for ``duration / rounds`` seconds, the rounds
    interleaved over all counts in a shuffled order, and the best run kept (``tps``; the median is in
    ``tps_median``). On a shared machine other programs only ever slow a run down, so the fastest of a few
    interleaved runs is the least disturbed estimate -- the reasoning behind ``timeit`` reporting its
    minimum time -- and interleaving spreads the drift of the machine's load over every point.
    """
    import numpy as np
    import pandas as pd

    clients = _sweep_clients(clients)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise BadParameter(f"rounds={rounds!r}: measure each client count at least once")
    drv = _WarmPostgres(dsn, max(clients))
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in clients}
    rng = np.random.default_rng(len(clients))
    try:
        with cpu_cap(pid, cpu_limit) as cap:
            for _ in range(rounds):
                for n in rng.permutation(clients).tolist():
                    runs[n].append(
                        measure(drv, accounts, n, duration=duration / rounds, read_ratio=read_ratio, think_ms=think_ms)
                    )
                    if progress is not None:
                        progress(runs[n][-1])
            throttled = cap.throttled_seconds() if cap is not None else 0.0
    finally:
        drv.close_all()
    rows = []
    for n in clients:
        r = runs[n]
        rows.append(
            {
                "clients": n,
                "tps": max(x["tps"] for x in r),
                "tps_median": float(np.median([x["tps"] for x in r])),
                "tps_min": min(x["tps"] for x in r),
                "p50_ms": float(np.median([x["p50_ms"] for x in r])),
                "p99_ms": float(np.median([x["p99_ms"] for x in r])),
                "errors": sum(x["errors"] for x in r),
                "cpu_limit": cpu_limit,
                "error_kinds": {k: v for x in r for k, v in x["error_kinds"].items()},
            }
        )
    df = pd.DataFrame(rows)
    df.attrs.update(throttled_s=throttled, read_ratio=read_ratio, think_ms=think_ms, rounds=rounds)
    return df


def cpu_sweep(
    dsn: str,
    accounts: int,
    pid: int | None,
    cpus: list[float],
    *,
    clients: int,
    duration: float,
    read_ratio: float = 1.0,
    think_ms: float = 20.0,
) -> pd.DataFrame:
    """Throughput at ``clients`` clients against the cores the server may use (a real CFS quota)."""
    import pandas as pd

    drv = _WarmPostgres(dsn, clients)
    rows = []
    try:
        for c in cpus:
            with cpu_cap(pid, c):
                rows.append(
                    {
                        **measure(drv, accounts, clients, duration=duration, read_ratio=read_ratio, think_ms=think_ms),
                        "cpu_limit": c,
                    }
                )
    finally:
        drv.close_all()
    return pd.DataFrame(rows)


def sleep_sweep(dsn: str, clients: list[int], *, sleep_ms: float = 50.0, duration: float = 1.0) -> pd.DataFrame:
    """A workload that is sleep-bound by construction (``SELECT pg_sleep``): it scales linearly."""
    import pandas as pd

    clients = _sweep_clients(clients)
    drv = _WarmPostgres(dsn, max(clients))
    sql = f"SELECT pg_sleep({float(sleep_ms) / 1000})"

    async def nap(ctx: Any, op: Any) -> None:
        try:
            await ctx.conn.fetch(sql)
        except (OSError, psycopg.OperationalError):
            ctx.conn.lk_broken = True
            raise

    try:
        rows = [
            measure(drv, 1, n, duration=duration, read_ratio=1.0, think_ms=0, fn=nap, name="pg_sleep") for n in clients
        ]
    finally:
        drv.close_all()
    return pd.DataFrame(rows)


def efficiency(df: pd.DataFrame) -> float:
    """Throughput at the most clients over the linear projection from the fewest: 1 = perfectly linear."""
    d = df.sort_values("clients")
    n0, x0 = float(d["clients"].iloc[0]), float(d["tps"].iloc[0])
    n1, x1 = float(d["clients"].iloc[-1]), float(d["tps"].iloc[-1])
    if n1 <= n0 or x0 <= 0:
        raise BadParameter("a knee needs throughput measured at two or more client counts")
    return x1 / (x0 * n1 / n0)


# -- published data, prices, cost ----------------------------------------------------------------


def _csv(name: str) -> list[dict[str, str]]:
    path = DATASETS / name
    if not path.is_file():
        raise LabkitError(
            f"{path} not found: the lesson reads it from the repository's datasets/ folder "
            "(run from a checkout of the course)"
        )
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def published() -> pd.DataFrame:
    """Robert Haas's PostgreSQL 9.1 pgbench -S throughput vs clients (see datasets/README.md)."""
    import pandas as pd

    rows = _csv(PUBLISHED_CSV)
    return pd.DataFrame({"clients": [int(r["clients"]) for r in rows], "tps": [float(r["tps"]) for r in rows]})


def prices() -> pd.DataFrame:
    """Machine sizes and on-demand prices (see datasets/README.md for source and date)."""
    import pandas as pd

    rows = _csv(PRICES_CSV)
    return pd.DataFrame(
        {
            "instance": [r["instance"] for r in rows],
            "vcpus": [int(r["vcpus"]) for r in rows],
            "memory_gib": [float(r["memory_gib"]) for r in rows],
            "usd_per_hour": [float(r["usd_per_hour"]) for r in rows],
        }
    )


def cost_table(fit: usl.USLFit, price: pd.DataFrame) -> pd.DataFrame:
    """Cost of 1000 transactions/s on each machine size, if its throughput follows ``fit`` with N = vCPUs.

    The assumption (Gunther's, for hardware scalability): a machine with p vCPUs, kept busy by p
    backends, serves X(p) of the fitted USL. Prices grow linearly with vCPUs; throughput does not.
    """
    out = price.copy()
    out["predicted_tps"] = [float(fit.predict(p)) for p in out["vcpus"]]
    out["usd_per_hour_per_1k_tps"] = out["usd_per_hour"] / (out["predicted_tps"] / 1000)
    return out


# -- checkpoints ----------------------------------------------------------------------------------


def check_knee(df: pd.DataFrame, max_efficiency: float = 0.5) -> None:
    """Throughput at the most clients is below the linear projection from the fewest by a clear margin."""
    e = efficiency(df)
    n = int(df["clients"].max())
    checkpoint(
        f"a knee: at {n} clients throughput is at most {max_efficiency:.0%} of the linear projection",
        e,
        at_most=max_efficiency,
        context=f"{df.sort_values('clients')['tps'].round(0).tolist()} tps at clients {sorted(df['clients'].tolist())}",
    )


def check_usl_fit(fit: usl.USLFit, min_r2: float = 0.9) -> None:
    """The USL describes the points (R^2) and finds contention or coherency (sigma or kappa > 0)."""
    ctx = f"sigma={fit.sigma:.3g}, kappa={fit.kappa:.3g}, R^2={fit.r2:.3f}"
    checkpoint(
        "the USL fit finds contention or coherency (sigma or kappa > 0)",
        max(fit.sigma, fit.kappa),
        at_least=1e-6,
        context=ctx,
    )
    checkpoint(f"the USL fit explains the measurements (R^2 >= {min_r2})", fit.r2, at_least=min_r2, context=ctx)


def check_published_peak(fit: usl.USLFit, data: pd.DataFrame) -> None:
    """The fitted N* lies between the client counts around the published table's highest throughput."""
    d = data.sort_values("clients").reset_index(drop=True)
    i = int(d["tps"].to_numpy().argmax())  # a position: the index was reset above
    lo = float(d["clients"].iloc[max(0, i - 1)])
    hi = float(d["clients"].iloc[min(len(d) - 1, i + 1)])
    where = f"data peaks at {int(d['clients'].iloc[i])} clients; fitted N*={fit.n_star:.1f}"
    checkpoint(f"the published table's USL peak N* is at least {lo:g} clients", fit.n_star, at_least=lo, context=where)
    checkpoint(f"the published table's USL peak N* is at most {hi:g} clients", fit.n_star, at_most=hi, context=where)


def check_cost_rises(cost: pd.DataFrame, factor: float = 2.0) -> None:
    """The biggest machine costs at least ``factor`` times more per unit of throughput than the smallest."""
    c = cost.sort_values("vcpus")["usd_per_hour_per_1k_tps"].tolist()
    checkpoint(
        f"cost per 1k tps on the biggest machine is at least {factor:g}x the smallest's",
        c[-1] / c[0],
        at_least=factor,
        context=f"{c[0]:.3f} -> {c[-1]:.3f} USD/h per 1k tps",
    )


def check_n_star(fn: Callable[[float, float], float], fits: dict[str, usl.USLFit]) -> None:
    """Exercise: ``fn(sigma, kappa)`` must give the fitted peak of each measured fit (and inf with kappa = 0)."""
    try:
        fn(0.1, 0.01)
    except NotImplementedError:
        print("Not attempted yet: write usl_peak(sigma, kappa) and run this cell again")
        return
    cases = [(name, f.sigma, f.kappa) for name, f in fits.items()] + [("a made-up fit", 0.2, 0.0008)]
    for name, s, k in cases:
        want = usl.peak(s, k)
        got = float(fn(s, k))
        if not (math.isinf(want) and math.isinf(got)) and not abs(got - want) <= 1e-6 * max(1.0, abs(want)):
            raise CheckpointFailed(
                f"{name} (sigma={s:.4g}, kappa={k:.4g}): usl_peak gave {got:.4g}, expected "
                f"{want:.4g} -- where dX/dN = 0: N* = sqrt((1 - sigma) / kappa)"
            )
    if not math.isinf(float(fn(0.1, 0.0))):
        raise CheckpointFailed("with kappa = 0 throughput never falls, so there is no peak: return math.inf")
    print("PASS  exercise: usl_peak gives the peak of every fitted curve")


# -- plots ----------------------------------------------------------------------------------------


def plot_sweep(df: pd.DataFrame, fit: usl.USLFit, title: str = "", ax: Any = None) -> Any:
    """Measured throughput vs clients, the USL curve, and the linear projection from the fewest clients."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
    d = df.sort_values("clients")
    xs = np.linspace(1, float(d["clients"].max()) * 1.05, 200)
    n0, x0 = float(d["clients"].iloc[0]), float(d["tps"].iloc[0])
    ax.plot(xs, x0 * xs / n0, ":", color="grey", label="linear projection")
    ax.plot(xs, fit.predict(xs), "-", color="C1", label=f"USL: σ={fit.sigma:.3f}, κ={fit.kappa:.2g}, R²={fit.r2:.2f}")
    ax.plot(d["clients"], d["tps"], "o", color="C0", label="measured")
    if not math.isinf(fit.n_star) and fit.n_star <= xs[-1]:
        ax.axvline(fit.n_star, color="C1", ls="--", lw=1, label=f"N* = {fit.n_star:.1f}")
    ax.set_ylim(0, max(float(d["tps"].max()), fit.x_max if math.isfinite(fit.x_max) else 0) * 1.3)
    ax.set_xlabel("concurrent clients N")
    ax.set_ylabel("throughput (transactions/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if fig is not None:
        fig.tight_layout()
    return fig or ax.figure


def plot_cpu(df: pd.DataFrame) -> Any:
    """Throughput against the cores the server may use, with proportional scaling from the smallest cap."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    d = df.sort_values("cpu_limit")
    c0, x0 = float(d["cpu_limit"].iloc[0]), float(d["tps"].iloc[0])
    ax.plot(d["cpu_limit"], x0 * d["cpu_limit"] / c0, ":", color="grey", label="proportional to CPU")
    ax.plot(d["cpu_limit"], d["tps"], "o-", label="measured")
    ax.set_xlabel("CPU the server may use (cores, cgroup quota)")
    ax.set_ylabel("throughput (transactions/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cost(cost: pd.DataFrame) -> Any:
    """Price per hour and cost per 1000 tps against machine size."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.plot(cost["vcpus"], cost["usd_per_hour"], "o-")
    ax1.set_xlabel("machine size (vCPUs)")
    ax1.set_ylabel("on-demand price (USD/hour)")
    ax1.grid(alpha=0.3)
    ax2.plot(cost["vcpus"], cost["usd_per_hour_per_1k_tps"], "o-", color="C3")
    ax2.set_xlabel("machine size (vCPUs)")
    ax2.set_ylabel("cost of 1000 tps (USD/hour)")
    ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig
