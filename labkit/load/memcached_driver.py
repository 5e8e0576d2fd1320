"""The memcached load driver: meta-protocol connections for threads and asyncio, with a ready-made get/set
operation. Re-exported by ``labkit.load.drivers``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

from labkit.errors import BadParameter
from labkit.load.driver_base import Driver, _endpoint
from labkit.load.workload import Op


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

            # wire form of each key, checked once: validating and encoding it per request cost ~4% of a run.
            # Bounded, so a huge key space does not grow memory without limit (the rest are checked each time).
            wire: dict[str, bytes] = {}

            def wire_key(key: str) -> bytes:
                w = wire.get(key)
                if w is None:
                    w = validate_key(prefix + key.encode())
                    if len(wire) < 200_000:
                        wire[key] = w
                return w

            async def aop(ctx: Any, op: Op) -> None:
                # hand-built requests: the same bytes get()/set() would send, minus their keyword handling
                if op.kind in reads:
                    r = await ctx.conn.request(b"mg " + wire_key(op.key) + b" v\r\n")
                    if count_hits:
                        ctx.count("hits" if r.status == "VA" else "misses")
                else:
                    value = op.value or b""
                    r = await ctx.conn.request(
                        b"ms " + wire_key(op.key) + b" %d" % len(value) + set_flags + value + b"\r\n"
                    )
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
