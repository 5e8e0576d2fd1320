"""Lesson 02's measurement: a pgbench-like mix on a real Postgres, timed through labkit.load.

pgbench's four tables (:func:`prepare`); a read is pgbench's ``-S`` lookup of one account, a write its
TPC-B-like transaction (account, teller and branch updates plus a history insert) as one statement. Each
client thinks ``think_ms`` between transactions. :class:`WarmPostgres` opens the connections before the clock
starts (pgbench also reports tps "without initial connection time"), and :func:`cpu_cap` caps the server's
whole process tree with a real cgroup. :func:`measure` is one closed-loop run; the sweeps over clients and
CPU are in :mod:`labkit.lessons.vertical`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from labkit import cgroups
from labkit.errors import BadParameter, LabkitError
from labkit.load import Uniform, Workload, run
from labkit.load.drivers import Driver, PqConnection

__all__ = [
    "ACCOUNTS_PER_BRANCH",
    "READ_SQL",
    "WRITE_SQL",
    "WarmPostgres",
    "cap_status",
    "cpu_cap",
    "measure",
    "prepare",
    "server_pid",
]

READ_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = %s"


WRITE_SQL = """WITH a AS (UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s RETURNING abalance),
t AS (UPDATE pgbench_tellers SET tbalance = tbalance + %s WHERE tid = %s),
b AS (UPDATE pgbench_branches SET bbalance = bbalance + %s WHERE bid = %s),
h AS (INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (%s, %s, %s, %s, now()))
SELECT abalance FROM a"""


ACCOUNTS_PER_BRANCH = 100_000
OP_TIMEOUT_S = 10.0  # one transaction; far above what the smallest CPU cap at 48 clients needs (~0.4 s mean)


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


class WarmPostgres(Driver):
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
    driver: WarmPostgres,
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
    # A capped server at 32-48 clients queues each transaction for up to a few seconds; without op_timeout the
    # runner gives operations still in flight at the deadline only 1 s to finish and counts the rest as errors.
    # OP_TIMEOUT_S both bounds a single transaction and gives those in flight at the end time to complete.
    res = run(op, wl, driver=driver, name=name, use_uvloop=True, op_timeout=OP_TIMEOUT_S)
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
