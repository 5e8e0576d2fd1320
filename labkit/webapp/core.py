"""What both servers share: configuration, the pre-fork heap, the feed and the card renderers.

Configuration comes from environment variables that ``labkit.services.web`` sets for the server process:

=====================  =====================================================================
LABKIT_WEB_DSN         Postgres DSN (posts/users/likes of ``labkit.datasets.instagram``)
LABKIT_WEB_MC          memcached ``host:port``
LABKIT_WEB_DEP         the slow dependency's ``host:port`` (``labkit.webapp.dependency``)
LABKIT_WEB_HEAP_MB     size of the shared heap every worker imports before fork (0: none)
LABKIT_WEB_GC          ``default`` | ``disable`` | ``freeze``: what the master does before it forks
LABKIT_WEB_RENDER      ``naive`` | ``cached``: how a post card is serialized
=====================  =====================================================================
"""

from __future__ import annotations

import gc
import json
import os
import re
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

GC_MODES = ("default", "disable", "freeze")
RENDERERS = ("naive", "cached")
ROW_BYTES = 4096  # one heap row is a tuple of ~500 pointers: about one 4 KiB page
FEED_SQL = (
    "SELECT p.id, p.user_id, u.username, p.caption, p.like_count FROM posts p JOIN users u "
    "ON u.id = p.user_id WHERE p.user_id = ANY(%s) ORDER BY p.id DESC LIMIT 20"
)
FOLLOWS = 10


class Config:
    """The server's settings, read once from the environment at import (before fork)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        self.dsn = env.get("LABKIT_WEB_DSN", "")
        self.mc = _hostport(env.get("LABKIT_WEB_MC", ""))
        self.dep = _hostport(env.get("LABKIT_WEB_DEP", ""))
        self.heap_mb = float(env.get("LABKIT_WEB_HEAP_MB", "0") or 0)
        self.gc_mode = env.get("LABKIT_WEB_GC", "default")
        self.render = env.get("LABKIT_WEB_RENDER", "naive")
        self.users = int(env.get("LABKIT_WEB_USERS", "2000"))
        if self.gc_mode not in GC_MODES:
            raise ValueError(f"LABKIT_WEB_GC={self.gc_mode!r}: use one of {', '.join(GC_MODES)}")
        if self.render not in RENDERERS:
            raise ValueError(f"LABKIT_WEB_RENDER={self.render!r}: use one of {', '.join(RENDERERS)}")


def _hostport(s: str) -> tuple[str, int] | None:
    if not s:
        return None
    host, _, port = s.rpartition(":")
    return host, int(port)


# ------------------------------------------------------------------------------------- the heap
class Profile:
    """A user as the web tier keeps it in memory: small, GC-tracked (it is a class instance)."""

    __slots__ = ("user_id", "username", "bio", "following")

    def __init__(self, user_id: int, username: str, bio: str, following: list[int]) -> None:
        self.user_id, self.username, self.bio, self.following = user_id, username, bio, following


def build_heap(heap_mb: float, users: int) -> dict[str, Any]:
    """The data every worker imports before the fork: profiles and a per-user ranking table.

    Each ranking row is a tuple of ~500 small ints (quantized affinities) that also points at the user's
    Profile, so the garbage collector keeps tracking it: a full collection writes into the header of every
    row, i.e. into one 4 KiB page per row — exactly what copy-on-write then duplicates in each worker.
    """
    n_rows = int(heap_mb * 2**20 // ROW_BYTES)
    profiles = {
        i: Profile(i, f"user{i:06d}", f"bio of user {i}", [(i * 7919 + k * 104729) % users + 1 for k in range(FOLLOWS)])
        for i in range(1, users + 1)
    }
    weights = tuple(range(256)) * 2  # small ints are preallocated: a row costs its own 4 KiB only
    rows = [(profiles[i % users + 1], *weights[: 500 - 1]) for i in range(n_rows)]
    return {"profiles": profiles, "ranking": rows, "rows": n_rows}


def apply_gc_mode(mode: str) -> None:
    """Run in the master after the heap is built, right before gunicorn forks its workers.

    default: nothing. disable: ``gc.disable()`` (Instagram 2017): no collection ever runs in a worker.
    freeze: ``gc.collect(); gc.freeze()`` (Python 3.7+, Instagram 2018): every object alive now moves to a
    permanent generation that later collections never traverse, so they never write to its pages.
    """
    if mode == "disable":
        gc.disable()
    elif mode == "freeze":
        gc.collect()
        gc.freeze()


def full_collections() -> int:
    """How many generation-2 (full) collections this process has run."""
    return int(gc.get_stats()[2]["collections"])


# ------------------------------------------------------------------------------------- the feed
def following(cfg: Config, user: int) -> list[int]:
    user = (user - 1) % cfg.users + 1
    return [(user * 7919 + k * 104729) % cfg.users + 1 for k in range(FOLLOWS)]


def feed_key(user: int) -> str:
    return f"labkit:feed:{user}"


_TAG = re.compile(r"#?(\w+)")


def render_naive(row: list[Any]) -> bytes:
    """A post card serialized from scratch on every request (as a first version of a view would)."""
    post_id, author, username, caption, likes = row
    words = _TAG.findall(caption)
    card = {
        "id": str(post_id),
        "author": {"id": author, "username": username, "url": f"/u/{username}"},
        "caption": caption,
        "hashtags": sorted({"#" + w for w in words}),
        "likes": likes,
        "likes_text": f"{likes:,} likes" if likes != 1 else "1 like",
        "created": datetime.fromtimestamp(1_300_000_000 + post_id * 60, UTC).isoformat(),
    }
    return json.dumps(card, sort_keys=True, indent=1).encode()


_CARD_CACHE: dict[tuple[int, int], bytes] = {}


def render_cached(row: list[Any]) -> bytes:
    """The same bytes, serialized once per (post, like count) and then served from a per-process dict."""
    key = (row[0], row[4])
    out = _CARD_CACHE.get(key)
    if out is None:
        if len(_CARD_CACHE) > 50_000:
            _CARD_CACHE.clear()
        out = _CARD_CACHE[key] = render_naive(row)
    return out


def render_feed(rows: list[list[Any]], render: str) -> bytes:
    fn = render_cached if render == "cached" else render_naive
    return b"[" + b",".join(fn(r) for r in rows) + b"]"


class LocalFeeds:
    """Each worker keeps the parsed feeds of recent viewers: long-lived objects that grow with requests.

    This is what lets the garbage collector's oldest generation fill up, so that a full collection runs in
    the worker after a few hundred requests (CPython runs one when the objects promoted since the last one
    exceed 25% of the long-lived ones).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.feeds: OrderedDict[int, list[list[Any]]] = OrderedDict()

    def get(self, user: int) -> list[list[Any]] | None:
        return self.feeds.get(user)

    def put(self, user: int, rows: list[list[Any]]) -> None:
        self.feeds[user] = rows
        if len(self.feeds) > self.capacity:
            self.feeds.popitem(last=False)


def cpu_work(n: int) -> int:
    """A CPU-bound handler's work: pure Python, no I/O (so an event loop has nothing to overlap)."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def query_int(query: str, name: str, default: int, lo: int = 0, hi: int = 10**9) -> int:
    for part in query.split("&"):
        k, _, v = part.partition("=")
        if k == name and v:
            try:
                return max(lo, min(hi, int(v)))
            except ValueError:
                return default
    return default


def now_ms() -> float:
    return time.perf_counter() * 1000
