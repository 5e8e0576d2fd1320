"""A small client for memcached's meta protocol (``mg``/``ms``/``md``/``mn``).

Why our own: the thundering-herd and caching lessons need the lease (``N`` -> ``W``/``Z``) and
serve-stale (``md I`` -> ``X``) flags, and the load drivers need an asyncio client that pipelines
requests from many tasks over one connection. The sync :class:`MetaClient` and the asyncio
:class:`AsyncMetaClient` share one core: the ``encode_*`` functions build request bytes and
:class:`ResponseReader` parses response bytes, so both twins speak exactly the same protocol.

Example::

    with MetaClient(("127.0.0.1", 11211)) as mc:
        r = mc.get("user:1", vivify=30)      # miss -> r.win is True: this client recomputes
        mc.set("user:1", b"alice", ttl=60)
        mc.delete("user:1", invalidate=True) # mark stale: the next get sees r.stale and r.win
"""

from __future__ import annotations

import asyncio
import base64 as _b64
import collections
import functools
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadParameter, LabkitError

__all__ = [
    "MetaResult",
    "MetaError",
    "MetaClient",
    "AsyncMetaClient",
    "ResponseReader",
    "validate_key",
    "encode_get",
    "encode_set",
    "encode_delete",
    "encode_noop",
    "register_prefix",
    "key_prefix_for",
]

MAX_KEY_LENGTH = 250
_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")  # memcached splits tokens on space; controls break lines
_SET_MODES = {
    "set": "S",
    "add": "E",
    "append": "A",
    "prepend": "P",
    "replace": "R",
    "S": "S",
    "E": "E",
    "A": "A",
    "P": "P",
    "R": "R",
}
# Tokens of a returned flag that carry integers; the rest stay strings.
_INT_FLAGS = {"c": "cas", "t": "ttl", "s": "size", "f": "client_flags", "h": "hit_before", "l": "last_access"}


class MetaError(LabkitError):
    """memcached answered ERROR / CLIENT_ERROR / SERVER_ERROR, or sent something unparseable."""


@dataclass(slots=True)
class MetaResult:
    """One meta response.

    ``status`` is the two-letter code: VA/HD (found or stored), EN (miss), NS (not stored),
    EX (CAS mismatch), NF (not found). ``win`` is the W flag (this client must recompute),
    ``lease_taken`` the Z flag (another client already won), ``stale`` the X flag.
    """

    status: str
    hit: bool = False
    value: bytes | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    win: bool = False
    stale: bool = False
    lease_taken: bool = False
    cas: int | None = None
    ttl: int | None = None

    @property
    def ok(self) -> bool:
        """True when the command did what it was asked (stored, deleted, found)."""
        return self.status in ("HD", "VA", "MN")

    stored = ok


def validate_key(key: str | bytes, *, binary: bool = False) -> bytes:
    """Return the key as wire bytes, or raise BadParameter saying how to fix it.

    With ``binary=True`` any bytes are allowed: the key is sent base64-encoded with the ``b`` flag.
    """
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if binary:
        if not raw:
            raise BadParameter("memcached key is empty: pass a non-empty key")
        raw = _b64.b64encode(raw)
        if len(raw) > MAX_KEY_LENGTH:
            raise BadParameter(
                f"memcached key is {len(raw)} bytes once base64-encoded (max "
                f"{MAX_KEY_LENGTH}): use a shorter key or hash it (e.g. sha1 hex)"
            )
        return raw
    if not raw:
        raise BadParameter("memcached key is empty: pass a non-empty key")
    if len(raw) > MAX_KEY_LENGTH:
        raise BadParameter(
            f"memcached key is {len(raw)} bytes (max {MAX_KEY_LENGTH}): use a shorter "
            "key or hash it (e.g. hashlib.sha1(key).hexdigest())"
        )
    if _BAD_KEY_BYTE.search(raw):
        raise BadParameter(
            f"memcached key {raw[:40]!r} contains a space or control character: "
            "remove it, or pass binary=True to send the key base64-encoded"
        )
    return raw


def _ttl_token(name: str, ttl: int | None) -> int | None:
    if ttl is None:
        return None
    if not isinstance(ttl, int) or ttl < -1:
        raise BadParameter(
            f"{name}={ttl!r}: a TTL is an integer number of seconds >= -1 (0 = never expires, -1 = expire now)"
        )
    return ttl


def _line(cmd: str, key: bytes, parts: list[str], datalen: int | None = None) -> bytes:
    head = [cmd.encode(), key]
    if datalen is not None:
        head.append(str(datalen).encode())
    head.extend(p.encode() for p in parts)
    return b" ".join(head) + b"\r\n"


def encode_get(
    key: str | bytes,
    *,
    value: bool = True,
    cas: bool = False,
    ttl: bool = False,
    size: bool = False,
    return_key: bool = False,
    client_flags: bool = False,
    vivify: int | None = None,
    recache: int | None = None,
    touch: int | None = None,
    no_bump: bool = False,
    quiet: bool = False,
    opaque: str | None = None,
    binary: bool = False,
) -> bytes:
    """Build an ``mg`` request. vivify=N<ttl> (lease on miss), recache=R<ttl>, touch=T<ttl>."""
    k = validate_key(key, binary=binary)
    return (
        b"mg "
        + k
        + _get_flags(
            value, cas, ttl, size, return_key, client_flags, vivify, recache, touch, no_bump, quiet, opaque, binary
        )
    )


@functools.lru_cache(maxsize=1024)
def _get_flags(
    value: bool,
    cas: bool,
    ttl: bool,
    size: bool,
    return_key: bool,
    client_flags: bool,
    vivify: int | None,
    recache: int | None,
    touch: int | None,
    no_bump: bool,
    quiet: bool,
    opaque: str | None,
    binary: bool,
) -> bytes:
    # cached: a load run asks for the same few flag sets millions of times
    parts: list[str] = []
    if binary:
        parts.append("b")
    for on, flag in (
        (cas, "c"),
        (ttl, "t"),
        (size, "s"),
        (return_key, "k"),
        (client_flags, "f"),
        (no_bump, "u"),
        (quiet, "q"),
    ):
        if on:
            parts.append(flag)
    for name, tok, flag in (("vivify", vivify, "N"), ("recache", recache, "R"), ("touch", touch, "T")):
        t = _ttl_token(name, tok)
        if t is not None:
            parts.append(f"{flag}{t}")
    if opaque is not None:
        parts.append(f"O{opaque}")
    if value:
        parts.append("v")
    return ("".join(" " + p for p in parts) + "\r\n").encode()


def encode_set(
    key: str | bytes,
    value: bytes | str,
    *,
    ttl: int = 0,
    cas: int | None = None,
    invalidate: bool = False,
    mode: str = "set",
    client_flags: int | None = None,
    return_cas: bool = False,
    quiet: bool = False,
    opaque: str | None = None,
    binary: bool = False,
) -> bytes:
    """Build an ``ms`` request. cas=C<token> compare-and-set; invalidate=I (with cas: stale-if-older)."""
    k = validate_key(key, binary=binary)
    data = value.encode() if isinstance(value, str) else bytes(value)
    if mode not in _SET_MODES:
        raise BadParameter(f"ms mode={mode!r} is unknown: use one of set, add, replace, append, prepend")
    parts: list[str] = ["b"] if binary else []
    parts.append(f"T{_ttl_token('ttl', ttl)}")
    if cas is not None:
        parts.append(f"C{int(cas)}")
    if invalidate:
        parts.append("I")
    if _SET_MODES[mode] != "S":
        parts.append(f"M{_SET_MODES[mode]}")
    if client_flags is not None:
        parts.append(f"F{int(client_flags)}")
    if return_cas:
        parts.append("c")
    if quiet:
        parts.append("q")
    if opaque is not None:
        parts.append(f"O{opaque}")
    return _line("ms", k, parts, len(data)) + data + b"\r\n"


def encode_delete(
    key: str | bytes,
    *,
    invalidate: bool = False,
    ttl: int | None = None,
    cas: int | None = None,
    quiet: bool = False,
    opaque: str | None = None,
    binary: bool = False,
) -> bytes:
    """Build an ``md`` request. invalidate=I marks the item stale (next mg sees X); ttl=T with I."""
    k = validate_key(key, binary=binary)
    if ttl is not None and not invalidate:
        raise BadParameter("md ttl= only applies with invalidate=True (memcached ignores T otherwise)")
    parts: list[str] = ["b"] if binary else []
    if invalidate:
        parts.append("I")
    t = _ttl_token("ttl", ttl)
    if t is not None:
        parts.append(f"T{t}")
    if cas is not None:
        parts.append(f"C{int(cas)}")
    if quiet:
        parts.append("q")
    if opaque is not None:
        parts.append(f"O{opaque}")
    return _line("md", k, parts)


def encode_noop() -> bytes:
    """Build an ``mn`` request; memcached answers MN after everything sent before it."""
    return b"mn\r\n"


def _as_get(res: MetaResult | None) -> MetaResult:
    """Interpret a reply to ``mg``: set ``hit``.

    A hit is a usable value: found (VA, or HD when no value was asked), and not the empty stub that
    N (vivify) creates on a miss. A stale item (X) is still a hit: serving it while one client
    recaches is the point of serve-stale.
    """
    if res is None:  # quiet miss: memcached sent nothing
        return MetaResult(status="EN")
    found = res.status in ("VA", "HD")
    res.hit = found and (res.stale or not (res.win or res.lease_taken))
    return res


def _result(status: str, tokens: list[bytes], value: bytes | None) -> MetaResult:
    if not tokens:  # the common case under load: no flags asked, none returned
        return MetaResult(status=status, value=value)
    flags: dict[str, Any] = {}
    for tok in tokens:
        name, rest = chr(tok[0]), tok[1:].decode(errors="replace")
        if name in _INT_FLAGS and rest.lstrip("-").isdigit():
            flags[name] = int(rest)
        else:
            flags[name] = rest if rest else True
    win, stale, taken = "W" in flags, "X" in flags, "Z" in flags
    return MetaResult(
        status=status,
        value=value,
        flags=flags,
        win=win,
        stale=stale,
        lease_taken=taken,
        cas=flags.get("c"),
        ttl=flags.get("t"),
    )


class ResponseReader:
    """Incremental parser: feed bytes, take complete responses.

    Returns MetaResult for meta codes, ("STAT", dict) blocks for ``stats``, ("VERSION", str).
    Errors from the server become MetaError instances (returned, so the caller raises in context).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # parsed up to here; compacted lazily (deleting per reply would copy the rest)
        self._stats: dict[str, str] | None = None

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next(self) -> Any | None:
        """The next complete response, or None when more bytes are needed."""
        buf = self._buf
        while True:
            pos = self._pos
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            line = bytes(buf[pos:end])
            parts = line.split()
            code = parts[0].decode(errors="replace") if parts else ""
            if code == "VA":
                size = int(parts[1])
                need = end + 2 + size + 2
                if len(buf) < need:
                    return None
                value = bytes(buf[end + 2 : end + 2 + size])
                self._pos = need
                return _result("VA", parts[2:], value)
            self._pos = end + 2
            if self._stats is not None:
                if code == "STAT":
                    self._stats[parts[1].decode()] = b" ".join(parts[2:]).decode(errors="replace")
                    continue
                if code == "END":
                    out, self._stats = self._stats, None
                    return ("STAT", out)
            if code == "STAT":
                self._stats = {parts[1].decode(): b" ".join(parts[2:]).decode(errors="replace")}
                continue
            if code == "END":  # 'stats' with nothing to report
                return ("STAT", {})
            if code in ("HD", "EN", "NS", "EX", "NF", "MN"):
                return _result(code, parts[1:], None)
            if code == "VERSION":
                return ("VERSION", line[8:].decode().strip())
            if code in ("ERROR", "CLIENT_ERROR", "SERVER_ERROR"):
                return MetaError(
                    f"memcached answered {line.decode(errors='replace')!r}: check the "
                    "command's flags and key (see memcached doc/protocol.txt, Meta Commands)"
                )
            return MetaError(f"unexpected line from memcached: {line[:80]!r}")


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

    async def request(self, request: bytes) -> Any:
        """Send one pre-built request (from the ``encode_*`` functions) and return its reply.
        The load drivers use this to skip keyword handling on their hot path."""
        return await self._call(request)

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
