"""The meta-protocol clients: MetaClient (sync) and AsyncMetaClient (asyncio, many tasks pipelined over one
connection), on one command core; addresses and the key prefixes of shared (class) servers.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any

from labkit.errors import BadParameter
from labkit.memcache_meta.protocol import (
    MetaError,
    MetaResult,
    ResponseReader,
    _as_get,
    encode_delete,
    encode_get,
    encode_noop,
    encode_set,
    validate_key,
)


def address_of(target: object) -> tuple[str, int]:
    """(host, port) of memcached given as (host, port), "host:port", or a labkit Endpoint (its ``address``)."""
    address = getattr(target, "address", target)
    if isinstance(address, str):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise BadParameter(f"memcached address {address!r}: use 'host:port' or (host, port)")
        return host, int(port)
    if isinstance(address, (tuple, list)) and len(address) == 2:
        return str(address[0]), int(address[1])
    raise BadParameter(f"memcached address {address!r}: use 'host:port', (host, port) or st.endpoint('memcached')")


# Key prefixes of shared (external) memcached servers, by address. The external provider registers the
# learner's namespace here when it resolves a memcached, so every client of that address -- a lesson's
# MetaClient built from a bare (host, port), a load driver, a forked worker -- keys under the namespace.
_PREFIXES: dict[tuple[str, int], bytes] = {}


def register_prefix(address: tuple[str, int] | str | Any, prefix: str | bytes | None) -> None:
    """Make every client of ``address`` put ``prefix`` in front of its keys (None: no prefix)."""
    addr = address_of(address)
    if prefix:
        raw = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        validate_key(raw)  # a prefix must itself be a valid key fragment
        _PREFIXES[addr] = raw
    else:
        _PREFIXES.pop(addr, None)


def key_prefix_for(address: tuple[str, int] | str | Any) -> bytes:
    """The key prefix clients of ``address`` use: an Endpoint's own ``key_prefix``, else the registered one."""
    extra = getattr(address, "extra", None)
    if isinstance(extra, dict) and extra.get("key_prefix"):
        return str(extra["key_prefix"]).encode()
    return _PREFIXES.get(address_of(address), b"")


class _Commands:
    """The request-building half shared by the sync and async clients."""

    key_prefix: bytes = b""

    def _init_prefix(self, address: Any, key_prefix: str | bytes | None) -> None:
        if key_prefix is None:
            self.key_prefix = key_prefix_for(address)
        else:
            self.key_prefix = key_prefix.encode() if isinstance(key_prefix, str) else bytes(key_prefix)

    def _k(self, key: str | bytes) -> str | bytes:
        """The key as stored: the namespace prefix (shared servers) in front of the caller's key."""
        if not self.key_prefix:
            return key
        return self.key_prefix + (key.encode() if isinstance(key, str) else bytes(key))

    def _get(self, key: str | bytes, kw: dict[str, Any]) -> tuple[bytes, bool]:
        # CAS and TTL come back by default: cheap, and what cache-aside/lease code needs
        if "cas" not in kw:
            kw["cas"] = True
        if "ttl" not in kw:
            kw["ttl"] = True
        return encode_get(self._k(key), **kw), bool(kw.get("quiet"))

    def _refuse_flush(self) -> None:
        if self.key_prefix:
            raise BadParameter(
                f"flush_all would empty a memcached other learners share (this client keys under "
                f"{self.key_prefix.decode(errors='replace')!r}): delete your own keys instead, or run the "
                "experiment on a private memcached: st.add('memcached', name='private', provider='local')"
            )


class MetaClient(_Commands):
    """Blocking meta-protocol client over one TCP connection (thread-safe via a lock)."""

    def __init__(
        self, address: tuple[str, int] | str | Any, *, timeout: float = 5.0, key_prefix: str | bytes | None = None
    ) -> None:
        self.address = address_of(address)
        self.timeout = timeout
        self._init_prefix(address, key_prefix)
        self._sock: socket.socket | None = None
        self._reader = ResponseReader()
        self._lock = threading.Lock()

    def connect(self) -> MetaClient:
        if self._sock is None:
            s = socket.create_connection(self.address, timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = s
            self._reader = ResponseReader()
        return self

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> MetaClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_one(self) -> Any:
        assert self._sock is not None
        while True:
            item = self._reader.next()
            if item is not None:
                return item
            chunk = self._sock.recv(65536)
            if not chunk:
                self.close()
                raise ConnectionError(
                    f"memcached at {self.address[0]}:{self.address[1]} closed "
                    "the connection (server stopped or killed?)"
                )
            self._reader.feed(chunk)

    def _call(self, request: bytes, quiet: bool = False) -> Any:
        with self._lock:
            self.connect()
            assert self._sock is not None
            try:
                # A quiet command may send no reply at all: 'mn' after it bounds the wait.
                self._sock.sendall(request + encode_noop() if quiet else request)
                first = self._read_one()
                if quiet:
                    if isinstance(first, MetaResult) and first.status == "MN":
                        return None
                    end = self._read_one()
                    if not (isinstance(end, MetaResult) and end.status == "MN"):
                        raise MetaError(f"expected MN after a quiet command, got {end!r}")
            except (OSError, MetaError):
                self.close()
                raise
            if isinstance(first, MetaError):
                raise first
            return first

    def get(self, key: str | bytes, **kw: Any) -> MetaResult:
        """``mg``: value, CAS and TTL by default. kw: vivify, recache, touch, value, quiet, binary..."""
        req, quiet = self._get(key, kw)
        return _as_get(self._call(req, quiet))

    def set(self, key: str | bytes, value: bytes | str, **kw: Any) -> MetaResult:
        """``ms``: kw ttl, cas, invalidate, mode, client_flags, return_cas, quiet, binary."""
        res = self._call(encode_set(self._k(key), value, **kw), bool(kw.get("quiet")))
        return res if res is not None else MetaResult(status="HD")

    def delete(self, key: str | bytes, **kw: Any) -> MetaResult:
        """``md``: kw invalidate (mark stale), ttl (with invalidate), cas, quiet, binary."""
        res = self._call(encode_delete(self._k(key), **kw), bool(kw.get("quiet")))
        return res if res is not None else MetaResult(status="HD")

    def noop(self) -> MetaResult:
        return self._call(encode_noop())

    def stats(self, group: str = "") -> dict[str, str]:
        """``stats [group]`` as a dict of strings (as memcached reports them)."""
        return self._call(f"stats {group}".strip().encode() + b"\r\n")[1]

    def version(self) -> str:
        return self._call(b"version\r\n")[1]

    def flush_all(self) -> None:
        """Invalidate every item on the server; refused on a shared server (a client with a key prefix)."""
        self._refuse_flush()
        with self._lock:
            self.connect()
            assert self._sock is not None
            self._sock.sendall(b"flush_all\r\n")
            line = b""
            while not line.endswith(b"\r\n"):
                chunk = self._sock.recv(64)
                if not chunk:
                    raise ConnectionError("memcached closed the connection during flush_all")
                line += chunk
            if not line.startswith(b"OK"):
                raise MetaError(f"flush_all answered {line!r}")


class _MetaProtocol(asyncio.Protocol):
    """Feeds bytes from the socket straight into the client's parser (no StreamReader layer)."""

    def __init__(self, client: AsyncMetaClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.client._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._on_lost(exc)


class AsyncMetaClient(_Commands):
    """asyncio twin of MetaClient. Many tasks may share one client: their requests are pipelined
    on the connection (written together once per loop iteration) and answers matched in order
    (memcached replies in request order)."""

    def __init__(
        self, address: tuple[str, int] | str | Any, *, timeout: float = 5.0, key_prefix: str | bytes | None = None
    ) -> None:
        self.address = address_of(address)
        self.timeout = timeout
        self._init_prefix(address, key_prefix)
        self._transport: asyncio.Transport | None = None
        self._parser = ResponseReader()
        self._pending: collections.deque[list[Any]] = collections.deque()  # [future, quiet, sent_at]
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self) -> AsyncMetaClient:
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._transport is None:
                loop = asyncio.get_running_loop()
                self._parser = ResponseReader()
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: _MetaProtocol(self), *self.address), self.timeout
                )
                self._transport, self._loop = transport, loop
                self._arm_watchdog()
        return self

    async def close(self) -> None:
        t, self._transport = self._transport, None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._fail_pending(ConnectionError("client closed"))
        if t is not None:
            t.close()

    async def __aenter__(self) -> AsyncMetaClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connection events ------------------------------------------------------------------
    def _fail_pending(self, exc: BaseException) -> None:
        self._out.clear()
        while self._pending:
            fut = self._pending.popleft()[0]
            if not fut.done():
                fut.set_exception(exc)

    def _on_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._fail_pending(
            ConnectionError(
                f"memcached at {self.address[0]}:{self.address[1]} closed the connection (server stopped or "
                f"killed?){': ' + str(exc) if exc else ''}"
            )
        )

    def _on_data(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        pending = self._pending
        while pending:
            entry = pending[0]
            try:
                item = parser.next()
            except Exception as exc:  # unparseable stream: nothing after this can be trusted
                self._abort(MetaError(f"could not parse memcached's reply: {exc}"))
                return
            if item is None:
                return
            fut, quiet = entry[0], entry[1]
            if quiet:
                # a quiet request was sent with a trailing 'mn': maybe one reply, then MN
                if isinstance(item, MetaResult) and item.status == "MN":
                    pending.popleft()
                    if not fut.done():
                        fut.set_result(None)
                elif not fut.done():
                    fut.set_result(item)
                continue
            pending.popleft()
            if not fut.done():
                if isinstance(item, MetaError):
                    fut.set_exception(item)
                else:
                    fut.set_result(item)

    def _abort(self, exc: BaseException) -> None:
        t, self._transport = self._transport, None
        self._fail_pending(exc)
        if t is not None:
            t.abort()

    def _arm_watchdog(self) -> None:
        # one timer per connection instead of one per request: checks the oldest request's age
        if self.timeout and self._loop is not None:
            self._watchdog = self._loop.call_later(max(0.05, self.timeout / 4), self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._watchdog = None
        if self._pending and time.monotonic() - self._pending[0][2] > self.timeout:
            self._abort(
                TimeoutError(
                    f"memcached at {self.address[0]}:{self.address[1]} did not answer within "
                    f"{self.timeout} s (server paused or overloaded?)"
                )
            )
            return
        if self._transport is not None:
            self._arm_watchdog()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._transport.write(data)

    async def _call(self, request: bytes, quiet: bool = False) -> Any:
        if self._transport is None:
            await self.connect()
        loop = self._loop
        assert loop is not None
        fut = loop.create_future()
        # queue the waiter and the bytes in the same step (no await between): order matches replies
        self._pending.append([fut, quiet, time.monotonic()])
        self._out.append(request + b"mn\r\n" if quiet else request)
        if not self._flush_scheduled:
            # requests from other tasks in this loop iteration go out in the same write (pipelining)
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        res = await fut
        if isinstance(res, MetaError):
            raise res
        return res

    def request(self, request: bytes) -> Coroutine[Any, Any, Any]:
        """Send one pre-built request (from the ``encode_*`` functions); await it for the reply.
        The load drivers use this to skip keyword handling on their hot path (hence no coroutine of its own:
        it hands back ``_call``'s, one frame less per request)."""
        return self._call(request)

    async def get(self, key: str | bytes, **kw: Any) -> MetaResult:
        """``mg``: value, CAS and TTL by default. kw: vivify, recache, touch, value, quiet, binary..."""
        req, quiet = self._get(key, kw)
        return _as_get(await self._call(req, quiet))

    async def set(self, key: str | bytes, value: bytes | str, **kw: Any) -> MetaResult:
        """``ms``: kw ttl, cas, invalidate, mode, client_flags, return_cas, quiet, binary."""
        res = await self._call(encode_set(self._k(key), value, **kw), bool(kw.get("quiet")))
        return res if res is not None else MetaResult(status="HD")

    async def delete(self, key: str | bytes, **kw: Any) -> MetaResult:
        """``md``: kw invalidate (mark stale), ttl (with invalidate), cas, quiet, binary."""
        res = await self._call(encode_delete(self._k(key), **kw), bool(kw.get("quiet")))
        return res if res is not None else MetaResult(status="HD")

    async def noop(self) -> MetaResult:
        return await self._call(encode_noop())

    async def stats(self, group: str = "") -> dict[str, str]:
        return (await self._call(f"stats {group}".strip().encode() + b"\r\n"))[1]

    async def version(self) -> str:
        return (await self._call(b"version\r\n"))[1]
