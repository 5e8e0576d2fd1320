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

One module per server kind (``postgres_driver``, ``memcached_driver``, ``cassandra_driver``) on the contract
in ``driver_base``; this module re-exports them and keeps the short names notebooks use.
"""

from __future__ import annotations

from typing import Any

from labkit.load.cassandra_driver import (
    CONSISTENCY_LEVELS,
    CassandraDriver,
    consistency_level,
    settle_exception,
    settle_result,
)
from labkit.load.driver_base import Driver
from labkit.load.memcached_driver import MemcachedDriver
from labkit.load.postgres_driver import PostgresDriver, PqConnection

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
    "PqConnection",
    "settle_result",
    "settle_exception",
]


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
