"""A lean HTTP/1.1 client with keep-alive, blocking and asyncio twins sharing one response parser.

Why not httpx/aiohttp: the load generator shares the machine's cores with the servers it measures, and a
general-purpose client spends several hundred microseconds of CPU per request; this one sends a request
line and reads a ``Content-Length`` body (all our servers send one), ~30 µs. It reconnects when the server
closes the connection (gunicorn's sync workers close after every response).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

__all__ = ["HttpError", "Response", "HttpConnection", "AsyncHttpConnection"]


class HttpError(ConnectionError):
    """The server closed the connection or answered something that is not HTTP/1.x."""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> object:
        import json

        return json.loads(self.body)


def _request(method: str, path: str, host: str, body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


def _parse_head(head: bytes) -> tuple[int, dict[str, str], int, bool]:
    """(status, headers, content length, server will close) from the bytes before the blank line."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"not an HTTP/1.x response: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" not in headers:
        raise HttpError("response without Content-Length: labkit's apps always send one")
    close = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
    return int(parts[1]), headers, int(headers["content-length"]), close


class HttpConnection:
    """Blocking keep-alive connection to one server: ``conn.request("GET", "/feed?user=3")``."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._buf = s, b""
        return s

    def request(self, method: str, path: str, body: bytes = b"") -> Response:
        fresh = self._sock is None
        sock = self._sock or self._connect()
        try:
            sock.sendall(_request(method, path, self.host, body))
            return self._read(sock)
        except (HttpError, OSError):
            self.close()
            if fresh:
                raise
            # a kept-alive connection the server had already closed: one retry on a new one
            sock = self._connect()
            sock.sendall(_request(method, path, self.host, body))
            return self._read(sock)

    def _read(self, sock: socket.socket) -> Response:
        buf = self._buf
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise HttpError(f"{self.host}:{self.port} closed the connection before answering")
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        status, headers, length, close = _parse_head(head)
        while len(buf) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise HttpError(f"{self.host}:{self.port} closed the connection mid-body")
            buf += chunk
        body, self._buf = buf[:length], buf[length:]
        if close:
            self.close()
        return Response(status, headers, body)

    def close(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            s.close()


class AsyncHttpConnection:
    """asyncio twin of HttpConnection: one request at a time per connection (use one per task)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader, self._writer = r, w
        return r, w

    async def request(self, method: str, path: str, body: bytes = b"") -> Response:
        fresh = self._writer is None
        if self._writer is None:
            await self._connect()
        try:
            return await self._exchange(method, path, body)
        except (HttpError, OSError, asyncio.IncompleteReadError):
            await self.close()
            if fresh:
                raise
            await self._connect()
            return await self._exchange(method, path, body)

    async def _exchange(self, method: str, path: str, body: bytes) -> Response:
        assert self._reader is not None and self._writer is not None
        self._writer.write(_request(method, path, self.host, body))
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raise HttpError(f"{self.host}:{self.port} closed the connection before answering") from e
        status, headers, length, close = _parse_head(head[:-4])
        data = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return Response(status, headers, data)

    async def close(self) -> None:
        w, self._writer, self._reader = self._writer, None, None
        if w is not None:
            w.close()
