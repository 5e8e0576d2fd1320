"""Reference solution of lesson 09's exercise: the cache-aside read path and invalidation on write."""

from __future__ import annotations

from labkit.datasets.post_store import PostStore, post_key
from labkit.memcache_meta import MetaClient


def read_post(mc: MetaClient, db: PostStore, post_id: int) -> bytes:
    key = post_key(post_id)
    r = mc.get(key)
    if r.hit and r.value is not None:
        return r.value
    card = db.render(post_id)
    mc.set(key, card, ttl=3600)  # a TTL bounds how long a missed invalidation can serve stale data
    return card


def like_post(mc: MetaClient, db: PostStore, post_id: int, user_id: int) -> None:
    db.like(post_id, user_id)  # Postgres first: it is the source of truth
    mc.delete(post_key(post_id))  # then drop the cached card; the next read recomputes it
