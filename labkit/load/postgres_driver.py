"""The Postgres load driver: full psycopg connections, or lean prepared statements over libpq (PqConnection)
for throughput runs. Re-exported by ``labkit.load.drivers``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from labkit.errors import BadParameter
from labkit.load.driver_base import Driver, _endpoint
from labkit.load.workload import Op

# libpq's ExecStatusType values (stable C ABI; a test checks them against psycopg.pq.ExecStatus). Plain ints:
# comparing a result's status to the enum costs a class-attribute lookup per query on Python 3.11.
_TUPLES_OK = 2
_FATAL_ERROR = 7


class PqConnection:
    """A lean connection for load generation: psycopg's own libpq binding (``psycopg.pq``) used
    directly, statements prepared once, parameters and results in text format.

    Why: psycopg's high-level async API costs ~100-140 µs of client CPU per query; on a laptop
    whose cores the server shares, that CPU is taken from the server being measured. This path
    costs ~30 µs (async, uvloop) and ~20 µs (blocking, GIL released while waiting), close to
    pgbench. Use it for throughput experiments; use the normal psycopg connection for lesson logic.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn  # the psycopg connection that owns the socket (closed with us)
        self.pg = conn.pgconn
        self._names: dict[str, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    @staticmethod
    def _convert(sql: str) -> bytes:
        """psycopg-style %s placeholders -> $1, $2 ... ('%%' stays a literal %)."""
        out, n, i = [], 0, 0
        while i < len(sql):
            if sql.startswith("%%", i):
                out.append("%")
                i += 2
            elif sql.startswith("%s", i):
                n += 1
                out.append(f"${n}")
                i += 2
            else:
                out.append(sql[i])
                i += 1
        return "".join(out).encode()

    @staticmethod
    def _params(params: Sequence[Any]) -> list[bytes | None]:
        return [
            str(v).encode()
            if type(v) is int  # the hot case (a key): checked first
            else None
            if v is None
            else v
            if isinstance(v, bytes)
            else (b"t" if v else b"f")
            if isinstance(v, bool)
            else str(v).encode()
            for v in params
        ]

    @staticmethod
    def _rows(res: Any) -> list[tuple[str | None, ...]]:
        status = res.status
        if status != _TUPLES_OK:
            if status == _FATAL_ERROR:
                from psycopg.errors import error_from_result

                raise error_from_result(res)
            return []
        nf, nt = res.nfields, res.ntuples
        if nf == 1:  # the common case of a load test: one column (pgbench -S's abalance)
            get = res.get_value
            return [(None if (v := get(r, 0)) is None else bytes(v).decode(),) for r in range(nt)]
        return [
            tuple(None if (v := res.get_value(r, c)) is None else bytes(v).decode() for c in range(nf))
            for r in range(nt)
        ]

    # blocking (threads): exec_* release the GIL while the server works
    def _name_blocking(self, sql: str) -> bytes:
        name = self._names.get(sql)
        if name is None:
            name = f"lk{len(self._names)}".encode()
            res = self.pg.prepare(name, self._convert(sql), None)
            self._rows(res)
            self._names[sql] = name
        return name

    def fetch_blocking(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[str | None, ...]]:
        """Run a prepared statement and return its rows (text values)."""
        res = self.pg.exec_prepared(self._name_blocking(sql), self._params(params))
        return self._rows(res)

    # asyncio: non-blocking libpq driven by the loop's reader callback. This is the hot path of every
    # Postgres throughput run, so it stays flat: one coroutine per query, no helper coroutines, no
    # enum or module lookups per call (each layer cost microseconds that pgbench does not pay).
    def _readable(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _attach(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        self.pg.nonblocking = 1
        loop.add_reader(self.pg.socket, self._readable)
        return loop

    async def _results(self) -> list[Any]:
        """Every result of the query just sent (libpq ends them with None)."""
        pg, loop = self.pg, self._loop or self._attach()
        while pg.flush() != 0:  # output buffer full (big parameters): let the socket drain
            await asyncio.sleep(0)
        out: list[Any] = []
        while True:
            pg.consume_input()  # raises OperationalError when the server has gone
            while not pg.is_busy():
                res = pg.get_result()
                if res is None:
                    return out
                out.append(res)
            self._waiter = fut = loop.create_future()
            await fut

    async def _prepare(self, sql: str) -> bytes:
        name = f"lk{len(self._names)}".encode()
        self.pg.send_prepare(name, self._convert(sql), None)
        for res in await self._results():
            self._rows(res)
        self._names[sql] = name
        return name

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[str | None, ...]]:
        """Run a prepared statement and return its rows (text values)."""
        pg = self.pg
        name = self._names.get(sql) or await self._prepare(sql)
        loop = self._loop or self._attach()
        pg.send_query_prepared(name, self._params(params))
        if pg.flush() != 0:  # rare: parameters bigger than the socket buffer
            return [row for res in await self._results() for row in self._rows(res)]
        rows: list[tuple[str | None, ...]] = []
        while True:
            pg.consume_input()  # raises OperationalError when the server has gone
            while not pg.is_busy():
                res = pg.get_result()
                if res is None:
                    return rows
                rows += self._rows(res)
            self._waiter = fut = loop.create_future()
            await fut

    def _detach(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.pg.socket)
            except Exception:  # socket already gone with the server
                pass
            self._loop = None

    def close(self) -> None:
        self._detach()
        self.conn.close()

    async def aclose(self) -> None:
        self._detach()
        await self.conn.close()


class PostgresDriver(Driver):
    """psycopg 3: one connection per client (autocommit), sync or async.

    prepare_threshold=0 prepares each statement on first use (like a server-side prepared
    statement); None disables preparation. ``pool()`` gives a psycopg_pool pool for lessons that
    model an application server sharing connections.
    """

    kind = "postgres"

    def __init__(
        self,
        target: Any,
        *,
        engine: str = "psycopg",
        autocommit: bool = True,
        prepare_threshold: int | None = 0,
        connect_timeout: float = 5.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        if engine not in ("psycopg", "pq"):
            raise BadParameter(
                f"engine={engine!r}: use 'psycopg' (full psycopg connections) or 'pq' "
                "(lean prepared statements for throughput runs)"
            )
        self.engine = engine
        ep = _endpoint(target, "postgres")
        self.dsn: str = ep if isinstance(ep, str) else ep.dsn
        if not self.dsn:
            raise BadParameter(f"{target!r} is not a Postgres endpoint: pass st.endpoint('postgres') or a DSN")
        self.kwargs = {
            "autocommit": autocommit,
            "prepare_threshold": prepare_threshold,
            "connect_timeout": max(1, int(connect_timeout)),
            **(options or {}),
        }

    def connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.dsn, **self.kwargs)
        return PqConnection(conn) if self.engine == "pq" else conn

    async def aconnect(self) -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.dsn, **self.kwargs)
        return PqConnection(conn) if self.engine == "pq" else conn

    async def aclose(self, conn: Any) -> None:
        await (conn.aclose() if isinstance(conn, PqConnection) else conn.close())

    def is_disconnect(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, (OSError, psycopg.OperationalError, psycopg.InterfaceError))

    def pool(self, min_size: int = 1, max_size: int = 10, **kw: Any) -> Any:
        """An AsyncConnectionPool (not yet open): ``async with drv.pool(4, 16) as pool: ...``."""
        from psycopg_pool import AsyncConnectionPool

        return AsyncConnectionPool(
            self.dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={k: v for k, v in self.kwargs.items() if k != "connect_timeout"},
            **kw,
        )

    def query_op(
        self,
        sql: str,
        params: Callable[[Op], Sequence[Any]] | None = None,
        *,
        fetch: bool = True,
        asynchronous: bool = True,
    ) -> Callable[..., Any]:
        """An operation running ``sql`` with ``params(op)`` (default: the key rank + 1, as pgbench's aid)."""
        params = params or (lambda op: (op.rank + 1,))
        if self.engine == "pq":
            if asynchronous:

                async def pq_aop(ctx: Any, op: Op) -> None:
                    await ctx.conn.fetch(sql, params(op))

                return self._bind(pq_aop)

            def pq_sop(ctx: Any, op: Op) -> None:
                ctx.conn.fetch_blocking(sql, params(op))

            return self._bind(pq_sop)
        if asynchronous:

            async def aop(ctx: Any, op: Op) -> None:
                cur = await ctx.conn.execute(sql, params(op))
                if fetch:
                    await cur.fetchall()

            return self._bind(aop)

        def sop(ctx: Any, op: Op) -> None:
            cur = ctx.conn.execute(sql, params(op))
            if fetch:
                cur.fetchall()

        return self._bind(sop)
