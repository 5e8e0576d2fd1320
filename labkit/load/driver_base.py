"""The driver contract the load runner uses (connect/close, aconnect/aclose, which errors mean the connection is
gone) and the endpoint lookup every driver shares. Re-exported by ``labkit.load.drivers``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from labkit.errors import BadParameter


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
