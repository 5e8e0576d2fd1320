"""Lesson 03: long-lived, warmed connections to every shard server, as a labkit.load driver.

An application server keeps one connection per database server for hours and sends each shard's
queries over the connection to the server that holds it. :class:`ConnectionPool` keeps such bundles
(one connection per server) between load runs, and :class:`ShardedDriver` lends one bundle to each
load client: ``ctx.conn[i]`` talks to server ``i``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import psycopg

from labkit.errors import BadParameter
from labkit.load import drivers

if TYPE_CHECKING:
    from labkit.lessons.shard_router import Router

__all__ = ["SESSION_OPTIONS", "ConnectionPool", "ShardedDriver", "schema"]

# A write is acknowledged when Postgres has it in memory and WAL buffers: the lesson measures CPU
# capacity per server, not the shared disk's fsync rate (a crash could lose the last ~ms of writes).
SESSION_OPTIONS = "-c synchronous_commit=off"


def schema(shard: int) -> str:
    """The schema of a logical shard: shard_0000 .. shard_8191."""
    return f"shard_{shard:04d}"


class _Conn(drivers.PqConnection):
    """A blocking psycopg connection driven as non-blocking libpq by whichever event loop runs the load.
    Statements go unprepared (each shard's SQL names its own schema). Kept open between runs."""

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[str | None, ...]]:
        self.pg.send_query_params(self._convert(sql), self._params(params))
        rows: list[tuple[str | None, ...]] = []
        for res in await self._results():
            rows += self._rows(res)
        return rows

    def release(self) -> None:
        """Let go of the current event loop (the next run's loop picks the connection up)."""
        self._detach()

    def broken(self) -> bool:
        from psycopg import pq

        return self.pg.status != pq.ConnStatus.OK or self.conn.closed


class ConnectionPool:
    """Long-lived, warmed connections: bundles of one connection per server, one bundle per client.

    Why: a Postgres backend compiles a schema's PL/pgSQL ``next_id()`` and loads the catalog entries of
    its tables the first time it touches that shard. An application server keeps its connections for
    hours, so those costs are paid once; a 3-second benchmark that opened fresh connections would
    mostly measure them (and, worse, spread them unevenly over 1 vs 4 servers). :meth:`warm` pays them
    up front, outside any measurement and before the CPU caps.
    """

    MAX = 64

    def __init__(self, dsns: Sequence[str]) -> None:
        self.dsns = list(dsns)
        self._free: list[list[_Conn]] = []
        self._all: list[list[_Conn]] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self._all)

    def _connect(self, j: int) -> _Conn:
        c = _Conn(psycopg.connect(self.dsns[j], autocommit=True, options=SESSION_OPTIONS))
        c.warmed = set()  # type: ignore[attr-defined]
        return c

    def reserve(self, clients: int) -> None:
        """Have at least ``clients`` bundles free to lend (opened in parallel)."""
        if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= self.MAX:
            raise BadParameter(f"clients={clients!r}: use 1..{self.MAX} concurrent clients")
        with self._lock:  # free ones, not all: a bundle still lent (a run cut short) must not count
            missing = clients - len(self._free)
        if missing <= 0:
            return
        jobs = [j for _ in range(missing) for j in range(len(self.dsns))]
        with ThreadPoolExecutor(max_workers=8) as pool:
            conns = list(pool.map(self._connect, jobs))
        with self._lock:
            for i in range(missing):
                bundle = conns[i * len(self.dsns) : (i + 1) * len(self.dsns)]
                self._all.append(bundle)
                self._free.append(bundle)

    def warm(
        self, router: Router, mappings: Sequence[Sequence[int]] | None = None, clients: int | None = None
    ) -> float:
        """Make the connections of the next ``clients`` bundles to be lent (default: all) touch each shard
        their server holds under ``mappings``: compile the shard's ``next_id()`` and load its table.
        Returns the seconds it took."""
        t0 = time.perf_counter()
        per_server = [
            {s for m in (mappings or [router.map]) for s, srv in enumerate(m) if srv == j}
            for j in range(len(self.dsns))
        ]
        with self._lock:  # take() lends from the end of the free list: warm those first
            bundles = list(self._all) if clients is None else self._free[-clients:]
        jobs = [(c, sorted(per_server[j] - c.warmed)) for b in bundles for j, c in enumerate(b)]  # type: ignore[attr-defined]

        def warm_one(job: tuple[_Conn, list[int]]) -> None:
            conn, shards = job
            if shards:
                conn.conn.execute(
                    "".join(
                        f"SELECT {schema(s)}.next_id(); SELECT 1 FROM {schema(s)}.photos WHERE user_id = -1;"
                        for s in shards
                    )
                )
                conn.warmed.update(shards)  # type: ignore[attr-defined]

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(warm_one, jobs))
        return time.perf_counter() - t0

    def take(self) -> list[_Conn]:
        with self._lock:
            if not self._free:
                raise BadParameter(
                    f"all {self.size} pooled connections are in use: call pool.reserve(clients) before the run"
                )
            bundle = self._free.pop()
        try:
            for j, c in enumerate(bundle):
                if c.broken():
                    bundle[j] = self._connect(j)
        except BaseException:
            self.give(bundle)  # a server that refuses a new connection must not cost the pool a bundle
            raise
        return bundle

    def give(self, bundle: list[_Conn]) -> None:
        for c in bundle:
            c.release()
        with self._lock:
            self._free.append(bundle)

    def driver(self) -> ShardedDriver:
        return ShardedDriver(self)

    def close(self) -> None:
        with self._lock:
            for bundle in self._all:
                for c in bundle:
                    c.release()
                    c.conn.close()
            self._free, self._all = [], []


class ShardedDriver(drivers.Driver):
    """labkit.load driver: each client takes a bundle from the pool, ``ctx.conn[i]`` is server ``i``."""

    kind = "postgres"

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    async def aconnect(self) -> list[_Conn]:
        return self.pool.take()

    async def aclose(self, conn: Any) -> None:
        self.pool.give(conn)

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, (OSError, psycopg.OperationalError, psycopg.InterfaceError))
