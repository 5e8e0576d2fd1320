"""The Cassandra load driver: sessions with per-request consistency levels, execute_async bridged to asyncio.
Re-exported by ``labkit.load.drivers``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from labkit.errors import BadParameter
from labkit.load.driver_base import Driver, _endpoint
from labkit.load.workload import Op

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
