"""The WSGI app, for gunicorn's pre-fork sync workers (``gunicorn --preload labkit.webapp.wsgi:app``).

Importing this module builds the shared heap and applies the GC mode: with ``--preload`` that happens once
in the master, right before it forks the workers. Connections are opened lazily in each worker (a socket
must never be shared across a fork).

Routes: /health, /stats, /feed?user=U, /like?post=P&user=U (POST), /slow?ms=50&post=P, /cpu?n=N,
/notify?post=P&ms=M&mode=inline|queue (the slow part done in the request, or enqueued as a task row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from labkit.webapp import core

CFG = core.Config()
if CFG.dsn:  # imported in the master (shared by every worker), as a real app imports its libraries
    import psycopg

    from labkit.memcache_meta import MetaClient
    from labkit.webapp.httpclient import HttpConnection
HEAP = core.build_heap(CFG.heap_mb, CFG.users) if CFG.heap_mb > 0 else {"profiles": {}, "ranking": [], "rows": 0}
core.apply_gc_mode(CFG.gc_mode)  # last thing at import: in the master, just before the fork

_state: dict[str, Any] = {"pid": None, "requests": 0}
_feeds = core.LocalFeeds()


def _conns() -> dict[str, Any]:
    """This worker's connections, opened on first use after the fork (reopened if the PID changed)."""
    if _state["pid"] != os.getpid():
        _state.update(pid=os.getpid(), pg=None, mc=None, dep=None)
    if _state["pg"] is None and CFG.dsn:
        _state["pg"] = psycopg.connect(CFG.dsn, autocommit=True)
    if _state["mc"] is None and CFG.mc:
        _state["mc"] = MetaClient(CFG.mc).connect()
    if _state["dep"] is None and CFG.dep:
        _state["dep"] = HttpConnection(*CFG.dep)
    return _state


def feed_rows(user: int) -> list[list[Any]]:
    """The viewer's feed rows: this worker's local copy, else memcached, else Postgres (then cached)."""
    rows = _feeds.get(user)
    if rows is not None:
        return rows
    c = _conns()
    key = core.feed_key(user)
    r = c["mc"].get(key) if c["mc"] else None
    if r is not None and r.hit:
        rows = json.loads(r.value)
    else:
        rows = [list(x) for x in c["pg"].execute(core.FEED_SQL, (core.following(CFG, user),)).fetchall()]
        if c["mc"]:
            c["mc"].set(key, json.dumps(rows).encode(), ttl=300)
    _feeds.put(user, rows)
    return rows


def _json(start: Callable[..., Any], obj: Any, status: str = "200 OK") -> Iterable[bytes]:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    start(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Worker-Pid", str(os.getpid())),
            ("X-Full-GC", str(core.full_collections())),
        ],
    )
    return [body]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path, query = environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", "")
    _state["requests"] += 1
    if path == "/feed":
        rows = feed_rows(core.query_int(query, "user", 1, 1))
        return _json(start_response, core.render_feed(rows, CFG.render))
    if path == "/slow":
        c = _conns()
        post = core.query_int(query, "post", 1, 1)
        likes = c["pg"].execute("SELECT like_count FROM posts WHERE id = %s", (post,)).fetchone()
        cached = c["mc"].get(core.feed_key(post)).hit if c["mc"] else False
        dep = c["dep"].request("GET", f"/?ms={core.query_int(query, 'ms', 50, 0, 60_000)}")
        return _json(
            start_response,
            {"post": post, "likes": likes[0] if likes else None, "cached": cached, "dependency": dep.status},
        )
    if path == "/notify":
        c = _conns()
        post = core.query_int(query, "post", 1, 1)
        if "mode=queue" in query.split("&"):  # the task queue's worker does the slow part later
            task = c["pg"].execute("INSERT INTO tasks (payload) VALUES (%s) RETURNING id", (post,)).fetchone()[0]
            return _json(start_response, {"post": post, "task": task})
        dep = c["dep"].request("GET", f"/?ms={core.query_int(query, 'ms', 50, 0, 60_000)}")  # inline: wait for it
        return _json(start_response, {"post": post, "dependency": dep.status})
    if path == "/like":
        c = _conns()
        post, user = core.query_int(query, "post", 1, 1), core.query_int(query, "user", 1, 1)
        with c["pg"].transaction():
            c["pg"].execute("INSERT INTO likes VALUES (%s, %s) ON CONFLICT DO NOTHING", (post, user))
            c["pg"].execute("UPDATE posts SET like_count = like_count + 1 WHERE id = %s", (post,))
        return _json(start_response, {"liked": post})
    if path == "/cpu":
        return _json(start_response, {"result": core.cpu_work(core.query_int(query, "n", 20_000, 0, 10**8))})
    if path == "/stats":
        import gc

        return _json(
            start_response,
            {
                "pid": os.getpid(),
                "requests": _state["requests"],
                "gc": CFG.gc_mode,
                "full_collections": core.full_collections(),
                "gc_enabled": gc.isenabled(),
                "frozen": gc.get_freeze_count(),
                "heap_rows": HEAP["rows"],
            },
        )
    if path == "/health":
        return _json(start_response, {"ok": True, "server": environ.get("SERVER_SOFTWARE", "wsgi"), "pid": os.getpid()})
    return _json(start_response, {"error": f"no route {path}"}, "404 Not Found")
