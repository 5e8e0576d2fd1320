"""HTTP driver: load clients that talk to labkit's web servers (gunicorn, uvicorn) over keep-alive HTTP/1.1.

    web = http(st.endpoint("sync"))
    def feed(ctx, op):                       # threads (blocking client)
        ctx.conn.request("GET", f"/feed?user={op.rank + 1}")
    async def afeed(ctx, op):                # asyncio (one connection per load client)
        await ctx.conn.request("GET", f"/feed?user={op.rank + 1}")
    run(feed, Workload(clients=4, ops=400), driver=web)

A non-2xx answer raises :class:`HttpStatusError` (counted by the runner as an error, not a disconnect).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labkit.load.driver_base import Driver, _endpoint
from labkit.load.workload import Op
from labkit.webapp.httpclient import AsyncHttpConnection, HttpConnection, HttpError, Response

__all__ = ["HttpDriver", "HttpStatusError", "http"]


class HttpStatusError(Exception):
    """The server answered, with an error status."""


def _ok(r: Response, path: str) -> Response:
    if r.status >= 400:
        raise HttpStatusError(f"{path} -> HTTP {r.status}: {r.body[:120]!r}")
    return r


class HttpDriver(Driver):
    kind = "http"

    def __init__(self, target: Any, *, timeout: float = 30.0) -> None:
        ep = _endpoint(target, "web")
        if isinstance(ep, tuple):
            self.host, self.port = ep
        else:
            self.host, self.port = ep.host, ep.port
        self.timeout = timeout

    def connect(self) -> HttpConnection:
        return HttpConnection(self.host, self.port, timeout=self.timeout)

    async def aconnect(self) -> AsyncHttpConnection:
        return AsyncHttpConnection(self.host, self.port, timeout=self.timeout)

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, (HttpError, OSError, ConnectionError))

    def get_op(
        self,
        path: Callable[[Op], str],
        *,
        asynchronous: bool = False,
        on_response: Callable[[Any, Response], None] | None = None,
    ) -> Callable[..., Any]:
        """A ready-made operation: GET ``path(op)``; ``on_response(ctx, response)`` may count things."""
        if asynchronous:

            async def aget(ctx: Any, op: Op) -> None:
                p = path(op)
                r = _ok(await ctx.conn.request("GET", p), p)
                if on_response is not None:
                    on_response(ctx, r)

            return self._bind(aget)

        def get(ctx: Any, op: Op) -> None:
            p = path(op)
            r = _ok(ctx.conn.request("GET", p), p)
            if on_response is not None:
                on_response(ctx, r)

        return self._bind(get)


def http(target: Any, **kw: Any) -> HttpDriver:
    """An HttpDriver for a web service's Endpoint (or a ``(host, port)`` pair)."""
    return HttpDriver(target, **kw)
