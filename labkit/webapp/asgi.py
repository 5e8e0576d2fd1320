"""The ASGI app, for uvicorn: one event loop per worker, async psycopg and an async memcached client.

Routes (as the WSGI app): /health, /stats, /feed?user=U, /slow?ms=50&post=P, /cpu?n=N,
/notify?post=P&ms=M&mode=inline|queue. While a handler awaits Postgres, memcached or the slow dependency, the
loop serves other requests: concurrency is not capped by the number of workers.
"""

from __future__ import annotations

import json
import os
from typing import Any

from labkit.webapp import core
from labkit.webapp.httpclient import AsyncHttpConnection

CFG = core.Config()
_state: dict[str, Any] = {"requests": 0, "pool": None, "mc": None, "dep_free": []}


async def _startup() -> None:
    if CFG.dsn:
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(CFG.dsn, min_size=2, max_size=10, open=False, kwargs={"autocommit": True})
        await pool.open(wait=True)
        _state["pool"] = pool
    if CFG.mc:
        from labkit.memcache_meta import AsyncMetaClient

        _state["mc"] = await AsyncMetaClient(CFG.mc).connect()


async def _shutdown() -> None:
    if _state["pool"] is not None:
        await _state["pool"].close()
    if _state["mc"] is not None:
        await _state["mc"].close()
    for c in _state["dep_free"]:
        await c.close()


async def _dependency(ms: int) -> int:
    """Call the slow dependency on a kept-alive connection from a free list (one per concurrent call)."""
    free: list[AsyncHttpConnection] = _state["dep_free"]
    if CFG.dep is None:
        raise RuntimeError("LABKIT_WEB_DEP is not set: start the app with the dependency's host:port")
    conn = free.pop() if free else AsyncHttpConnection(*CFG.dep)
    try:
        r = await conn.request("GET", f"/?ms={ms}")
    except BaseException:
        await conn.close()
        raise
    free.append(conn)
    return r.status


async def _query(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    async with _state["pool"].connection() as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def _handle(path: str, query: str) -> tuple[int, Any]:
    if path == "/slow":
        post = core.query_int(query, "post", 1, 1)
        likes = await _query("SELECT like_count FROM posts WHERE id = %s", (post,))
        cached = (await _state["mc"].get(core.feed_key(post))).hit if _state["mc"] else False
        status = await _dependency(core.query_int(query, "ms", 50, 0, 60_000))
        return 200, {"post": post, "likes": likes[0][0] if likes else None, "cached": cached, "dependency": status}
    if path == "/notify":
        post = core.query_int(query, "post", 1, 1)
        if "mode=queue" in query.split("&"):
            task = await _query("INSERT INTO tasks (payload) VALUES (%s) RETURNING id", (post,))
            return 200, {"post": post, "task": task[0][0]}
        return 200, {"post": post, "dependency": await _dependency(core.query_int(query, "ms", 50, 0, 60_000))}
    if path == "/feed":
        user = core.query_int(query, "user", 1, 1)
        r = await _state["mc"].get(core.feed_key(user)) if _state["mc"] else None
        rows: list[list[Any]]
        if r is not None and r.hit:
            rows = json.loads(r.value)
        else:
            rows = [list(x) for x in await _query(core.FEED_SQL, (core.following(CFG, user),))]
            if _state["mc"]:
                await _state["mc"].set(core.feed_key(user), json.dumps(rows).encode(), ttl=300)
        return 200, core.render_feed(rows, CFG.render)
    if path == "/cpu":
        return 200, {"result": core.cpu_work(core.query_int(query, "n", 20_000, 0, 10**8))}
    if path == "/stats":
        return 200, {"pid": os.getpid(), "requests": _state["requests"], "full_collections": core.full_collections()}
    if path == "/health":
        import uvicorn

        return 200, {"ok": True, "server": f"uvicorn/{uvicorn.__version__}", "pid": os.getpid()}
    return 404, {"error": f"no route {path}"}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await _startup()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await _shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    _state["requests"] += 1
    status, obj = await _handle(scope["path"], scope.get("query_string", b"").decode())
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-worker-pid", str(os.getpid()).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
