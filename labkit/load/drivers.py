"""Drivers: how each load client gets (and loses) its connection to a real server.

A driver hands the runner ``connect()``/``close()`` (threads) and ``aconnect()``/``aclose()``
(asyncio), and says which exceptions mean "the connection is gone" so the client reconnects with
backoff. The lesson's operation receives the connection as ``ctx.conn``::

    pg = postgres(st)                                   # or PostgresDriver(dsn)
    async def lookup(ctx, op):
        await (await ctx.conn.execute("SELECT 1 WHERE %s > 0", (op.rank + 1,))).fetchone()
    run(lookup, Workload(clients=8, duration=3), driver=pg)

Each driver also offers a ready-made operation for the common case (``pg.query_op(sql)``,
``mc.get_set_op()``, ``cass.query_op(cql, consistency="QUORUM")``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from labkit.errors import BadParameter
from labkit.load.workload import Op

__all__ = [
    "Driver",
    "PostgresDriver",
    "MemcachedDriver",
    "CassandraDriver",
    "postgres",
    "memcached",
    "cassandra",
    "consistency_level",
    "CONSISTENCY_LEVELS",
]


def _endpoint(target: Any, kind: str) -> Any:
    """Accept an Endpoint, a Stack (takes its `kind` service), or a plain DSN/address."""
    if hasattr(target, "endpoint") and callable(target.endpoint):
        return target.endpoint(kind)
    return target


class Driver:
    """Base: a driver for one server kind. Subclasses override what they support."""

    kind = "none"

    def connect(self) -> Any:
        raise BadParameter(
            f"the {self.kind} driver has no blocking client: define the operation with "
            "`async def` so it runs on the event loop"
        )

    def close(self, conn: Any) -> None:
        close = getattr(conn, "close", None)
        if close is not None:
            close()

    async def aconnect(self) -> Any:
        raise BadParameter(
            f"the {self.kind} driver has no asyncio client: define the operation as a "
            "plain function (it runs on threads)"
        )

    async def aclose(self, conn: Any) -> None:
        close = getattr(conn, "close", None)
        if close is not None:
            out = close()
            if asyncio.iscoroutine(out):
                await out

    def _bind(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Mark a ready-made operation with its driver, so run(op) needs no driver= argument."""
        fn.driver = self  # type: ignore[attr-defined]
        return fn

    def is_disconnect(self, exc: BaseException) -> bool:
        """True when exc means the connection is unusable (reconnect, with backoff)."""
        return isinstance(exc, (OSError, ConnectionError))


# -- Postgres ---------------------------------------------------------------------------------


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
            None
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
        from psycopg import pq
        from psycopg.errors import error_from_result

        if res.status == pq.ExecStatus.FATAL_ERROR:
            raise error_from_result(res)
        if res.status != pq.ExecStatus.TUPLES_OK:
            return []
        nf = res.nfields
        return [
            tuple(None if (v := res.get_value(r, c)) is None else bytes(v).decode() for c in range(nf))
            for r in range(res.ntuples)
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

    # asyncio: non-blocking libpq driven by the loop's reader callback
    def _readable(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _results(self) -> list[Any]:
        pg = self.pg
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            pg.nonblocking = 1
            self._loop.add_reader(pg.socket, self._readable)
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
            self._waiter = self._loop.create_future()
            await self._waiter

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[str | None, ...]]:
        """Run a prepared statement and return its rows (text values)."""
        name = self._names.get(sql)
        if name is None:
            name = f"lk{len(self._names)}".encode()
            self.pg.send_prepare(name, self._convert(sql), None)
            for res in await self._results():
                self._rows(res)
            self._names[sql] = name
        self.pg.send_query_prepared(name, self._params(params))
        rows: list[tuple[str | None, ...]] = []
        for res in await self._results():
            rows += self._rows(res)
        return rows

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


# -- memcached --------------------------------------------------------------------------------


class MemcachedDriver(Driver):
    """memcached: ``client="meta"`` (labkit.memcache_meta, sync and asyncio: leases, stale flags,
    pipelining) or ``client="pymemcache"`` (the classic text protocol, threads only).

    ``share=k`` (async only): clients share k pipelined connections instead of one each; the same
    number of requests stays in flight, with fewer sockets for the server to poll.
    """

    kind = "memcached"

    def __init__(self, target: Any, *, client: str = "meta", timeout: float = 5.0, share: int | None = None) -> None:
        from labkit.memcache_meta import address_of, key_prefix_for

        ep = _endpoint(target, "memcached")
        self.address = address_of(ep)
        # a shared (external) memcached: every key this driver writes goes under the learner's namespace
        self.key_prefix = key_prefix_for(ep)
        if client not in ("meta", "pymemcache"):
            raise BadParameter(f"client={client!r}: use 'meta' (sync+async, meta protocol) or 'pymemcache'")
        if share is not None and (not isinstance(share, int) or share < 1):
            raise BadParameter(f"share={share!r}: the number of shared connections must be an integer >= 1")
        self.client, self.timeout, self.share = client, timeout, share
        self._shared: dict[tuple[int, int], list[Any]] = {}
        self._users: dict[int, int] = {}
        self._rr = 0

    def connect(self) -> Any:
        if self.client == "pymemcache":
            from pymemcache.client.base import Client

            c = Client(
                self.address,
                connect_timeout=self.timeout,
                timeout=self.timeout,
                no_delay=True,
                key_prefix=self.key_prefix,
            )
            c.version()  # connect now, so a dead server fails here (counted), not mid-operation
            return c
        from labkit.memcache_meta import MetaClient

        return MetaClient(self.address, timeout=self.timeout, key_prefix=self.key_prefix).connect()

    async def aconnect(self) -> Any:
        if self.client != "meta":
            return await super().aconnect()
        from labkit.memcache_meta import AsyncMetaClient

        if self.share is None:
            return await AsyncMetaClient(self.address, timeout=self.timeout, key_prefix=self.key_prefix).connect()
        # one set of shared connections per event loop (and per process: forked workers rebuild it)
        key = (id(asyncio.get_running_loop()), os.getpid())
        conns = self._shared.setdefault(key, [])
        if len(conns) < self.share:
            conns.append(AsyncMetaClient(self.address, timeout=self.timeout, key_prefix=self.key_prefix))
        self._rr = (self._rr + 1) % len(conns)
        c = conns[self._rr]
        self._users[id(c)] = self._users.get(id(c), 0) + 1
        await c.connect()
        return c

    async def aclose(self, conn: Any) -> None:
        if self.share is None:
            await conn.close()
            return
        # shared: other clients may still have requests in flight on it; the last user closes it
        # (a broken shared connection reconnects by itself on its next request)
        left = self._users.get(id(conn), 1) - 1
        self._users[id(conn)] = left
        if left <= 0:
            self._users.pop(id(conn), None)
            for key, conns in list(self._shared.items()):
                if conn in conns:
                    conns.remove(conn)
                    if not conns:
                        del self._shared[key]
            await conn.close()

    def is_disconnect(self, exc: BaseException) -> bool:
        from pymemcache.exceptions import MemcacheUnexpectedCloseError

        from labkit.memcache_meta import MetaError

        return isinstance(exc, (OSError, ConnectionError, MemcacheUnexpectedCloseError, MetaError))

    def get_set_op(
        self,
        *,
        ttl: int = 0,
        asynchronous: bool = True,
        read_kinds: Sequence[str] = ("get", "read"),
        count_hits: bool = True,
    ) -> Callable[..., Any]:
        """An operation: read kinds do a get (counting 'hits'/'misses'), others set op.value."""
        reads = set(read_kinds)
        if asynchronous:
            if self.client != "meta":
                raise BadParameter("asynchronous get_set_op needs client='meta'; pymemcache is blocking")

            from labkit.memcache_meta import encode_set, validate_key

            set_flags = f" T{int(ttl)}\r\n".encode()
            prefix = self.key_prefix

            async def aop(ctx: Any, op: Op) -> None:
                # hand-built requests: the same bytes get()/set() would send, minus their keyword handling
                if op.kind in reads:
                    r = await ctx.conn.request(b"mg " + validate_key(prefix + op.key.encode()) + b" v\r\n")
                    if count_hits:
                        ctx.count("hits" if r.status == "VA" else "misses")
                else:
                    value = op.value or b""
                    key = validate_key(prefix + op.key.encode())
                    r = await ctx.conn.request(b"ms " + key + b" %d" % len(value) + set_flags + value + b"\r\n")
                    if r.status != "HD":
                        raise RuntimeError(f"memcached did not store {op.key}: {r.status}")

            assert encode_set("k", b"v", ttl=ttl) == b"ms k 1" + set_flags + b"v\r\n"  # same wire format
            return self._bind(aop)

        if self.client == "pymemcache":

            def pop(ctx: Any, op: Op) -> None:
                if op.kind in reads:
                    hit = ctx.conn.get(op.key) is not None
                    if count_hits:
                        ctx.count("hits" if hit else "misses")
                else:
                    ctx.conn.set(op.key, op.value or b"", expire=ttl, noreply=False)

            return self._bind(pop)

        def mop(ctx: Any, op: Op) -> None:
            if op.kind in reads:
                r = ctx.conn.get(op.key, cas=False, ttl=False)
                if count_hits:
                    ctx.count("hits" if r.hit else "misses")
            else:
                ctx.conn.set(op.key, op.value or b"", ttl=ttl)

        return self._bind(mop)


# -- Cassandra --------------------------------------------------------------------------------

CONSISTENCY_LEVELS = (
    "ANY",
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "SERIAL",
    "LOCAL_SERIAL",
    "LOCAL_ONE",
)


def settle_result(fut: asyncio.Future[Any], value: Any) -> None:
    """Resolve ``fut`` unless it is already done (cancelled by a timeout): for callbacks from driver threads."""
    if not fut.done():
        fut.set_result(value)


def settle_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``fut`` with ``exc`` unless it is already done."""
    if not fut.done():
        fut.set_exception(exc)


def consistency_level(name: Any) -> int:
    """'quorum' -> cassandra.ConsistencyLevel.QUORUM; unknown names raise BadParameter listing the valid ones."""
    from cassandra import ConsistencyLevel

    if isinstance(name, int) and not isinstance(name, bool) and name in ConsistencyLevel.value_to_name:
        return name
    key = str(name).strip().upper().replace("-", "_") if isinstance(name, str) else None
    if key not in CONSISTENCY_LEVELS:
        raise BadParameter(f"unknown consistency level {name!r}: use one of {', '.join(CONSISTENCY_LEVELS)}")
    return getattr(ConsistencyLevel, key)


class CassandraSession:
    """What ``ctx.conn`` is for Cassandra: a shared driver session with per-request consistency."""

    def __init__(self, session: Any, default_cl: int) -> None:
        self.session = session
        self.default_cl = default_cl
        self._prepared: dict[str, Any] = {}
        self._lock = threading.Lock()

    def prepare(self, cql: str) -> Any:
        with self._lock:
            if cql not in self._prepared:
                self._prepared[cql] = self.session.prepare(cql)
            return self._prepared[cql]

    def _statement(self, cql: str, params: Sequence[Any] | None, consistency: Any) -> Any:
        stmt = self.prepare(cql).bind(params or ())
        stmt.consistency_level = self.default_cl if consistency is None else consistency_level(consistency)
        return stmt

    def execute(self, cql: str, params: Sequence[Any] | None = None, *, consistency: Any = None) -> Any:
        """Blocking execute of a (cached) prepared statement at the given consistency level."""
        return self.session.execute(self._statement(cql, params, consistency))

    async def aexecute(self, cql: str, params: Sequence[Any] | None = None, *, consistency: Any = None) -> Any:
        """execute_async bridged to asyncio: the driver's I/O thread resolves an asyncio future."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        rf = self.session.execute_async(self._statement(cql, params, consistency))

        def ok(rows: Any) -> None:
            loop.call_soon_threadsafe(settle_result, fut, rows)

        def err(exc: BaseException) -> None:
            loop.call_soon_threadsafe(settle_exception, fut, exc)

        rf.add_callbacks(ok, err)
        return await fut

    def close(self) -> None:
        """Sessions are shared by all clients of the driver; the driver's shutdown() closes them."""


class CassandraDriver(Driver):
    """cassandra-driver: one Cluster/Session per process shared by all clients (the driver is
    thread-safe and multiplexes requests), consistency level per request."""

    kind = "cassandra"

    def __init__(
        self,
        target: Any,
        *,
        keyspace: str | None = None,
        consistency: Any = "ONE",
        local_dc: str | None = None,
        request_timeout: float = 10.0,
        contact_points: Sequence[str] | None = None,
        port: int | None = None,
    ) -> None:
        ep = _endpoint(target, "cassandra") if target is not None else None
        self.contact_points = list(contact_points or (ep.contact_points if ep is not None else ["127.0.0.1"]))
        self.port = port or (ep.port if ep is not None else 9042)
        self.local_dc = local_dc or (ep.local_dc if ep is not None else None)
        self.keyspace = keyspace
        self.default_cl = consistency_level(consistency)
        self.request_timeout = request_timeout
        self._sessions: dict[int, tuple[Any, CassandraSession]] = {}
        self._lock = threading.Lock()

    def _session(self) -> CassandraSession:
        pid = os.getpid()  # the driver's threads do not survive fork: one cluster per process
        with self._lock:
            if pid not in self._sessions:
                from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
                from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

                policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=self.local_dc)) if self.local_dc else None
                profile = ExecutionProfile(
                    request_timeout=self.request_timeout,
                    consistency_level=self.default_cl,
                    **({"load_balancing_policy": policy} if policy else {}),
                )
                cluster = Cluster(
                    self.contact_points,
                    port=self.port,
                    protocol_version=5,
                    execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                )
                session = cluster.connect(self.keyspace)
                self._sessions[pid] = (cluster, CassandraSession(session, self.default_cl))
            return self._sessions[pid][1]

    def connect(self) -> CassandraSession:
        return self._session()

    async def aconnect(self) -> CassandraSession:
        # connecting blocks (driver's own threads): keep it off the event loop
        return await asyncio.get_running_loop().run_in_executor(None, self._session)

    def close(self, conn: Any) -> None:
        """Shared session: closed by shutdown(), not per client."""

    async def aclose(self, conn: Any) -> None:
        """Shared session: closed by shutdown(), not per client."""

    def is_disconnect(self, exc: BaseException) -> bool:
        from cassandra import OperationTimedOut, Unavailable
        from cassandra.cluster import NoHostAvailable

        # not a reason to drop the shared session, but a reason for the client to back off
        return isinstance(exc, (OSError, NoHostAvailable, OperationTimedOut, Unavailable))

    def shutdown(self) -> None:
        with self._lock:
            for cluster, _ in self._sessions.values():
                cluster.shutdown()
            self._sessions.clear()

    def __enter__(self) -> CassandraDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def query_op(
        self,
        cql: str,
        params: Callable[[Op], Sequence[Any]] | None = None,
        *,
        consistency: Any = None,
        asynchronous: bool = True,
    ) -> Callable[..., Any]:
        """An operation executing ``cql`` with ``params(op)`` (default: (op.key,)) at ``consistency``."""
        params = params or (lambda op: (op.key,))
        cl = None if consistency is None else consistency_level(consistency)
        if asynchronous:

            async def aop(ctx: Any, op: Op) -> Any:
                return await ctx.conn.aexecute(cql, params(op), consistency=cl)

            return self._bind(aop)

        def sop(ctx: Any, op: Op) -> Any:
            return ctx.conn.execute(cql, params(op), consistency=cl)

        return self._bind(sop)


# -- short names for notebooks ----------------------------------------------------------------


def postgres(target: Any, **kw: Any) -> PostgresDriver:
    """PostgresDriver for a stack, an endpoint or a DSN."""
    return PostgresDriver(target, **kw)


def memcached(target: Any, **kw: Any) -> MemcachedDriver:
    """MemcachedDriver for a stack, an endpoint or (host, port)."""
    return MemcachedDriver(target, **kw)


def cassandra(target: Any, **kw: Any) -> CassandraDriver:
    """CassandraDriver for a stack, an endpoint, or None with contact_points=/port=."""
    return CassandraDriver(target, **kw)
