"""Reference solution of lesson 08's exercise: the sync handler converted to async."""

from __future__ import annotations

from typing import Any


async def handler(dep: Any, post: int) -> dict[str, Any]:
    r = await dep.request("GET", "/?ms=50")  # awaits: the event loop serves other callers meanwhile
    return {"post": post, "dependency": r.status}
