"""A slow downstream service (ASGI, for uvicorn): ``GET /?ms=50`` answers after 50 ms of waiting.

It stands for any remote call a request handler makes (a recommendation service, a payment API): the
caller's worker is blocked for that long unless it awaits. It sleeps with ``asyncio.sleep``, so one
process can hold thousands of such waits at once and never becomes the bottleneck itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from labkit.webapp.core import query_int


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = scope.get("query_string", b"").decode()
    if scope["path"] == "/health":
        import uvicorn

        body = f'{{"ok": true, "server": "uvicorn/{uvicorn.__version__}"}}'.encode()
    else:
        await asyncio.sleep(query_int(query, "ms", 50, 0, 60_000) / 1000)
        body = b'{"ok": true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
