"""Lesson 09's exercise check: a learner's cache-aside read and write, run against the real memcached and
Postgres, with a message that says what to fix. Re-exported by ``labkit.lessons.caching``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labkit.datasets import instagram
from labkit.datasets.post_store import PostStore, decode_card, post_key
from labkit.errors import CheckpointFailed
from labkit.memcache_meta import MetaClient


def _expect(ok: object, what: str) -> None:  # any truthy value passes
    if not ok:
        raise CheckpointFailed(f"exercise: {what}")


def check_cache_aside(
    read_post: Callable[[MetaClient, PostStore, int], bytes],
    like_post: Callable[[MetaClient, PostStore, int, int], None],
    mc_address: Any,
    dsn: str,
    data: instagram.InstagramData,
) -> None:
    """Run the learner's ``read_post(mc, db, post_id)`` and ``like_post(mc, db, post_id, user_id)``
    against the real memcached and Postgres; print PASS or raise CheckpointFailed saying what was seen."""
    try:
        _check_cache_aside(read_post, like_post, mc_address, dsn, data)
    except NotImplementedError:
        print("Not attempted yet: write read_post and like_post in the cell above, then run this cell again.")


def _check_cache_aside(
    read_post: Callable[..., bytes],
    like_post: Callable[..., None],
    mc_address: Any,
    dsn: str,
    data: instagram.InstagramData,
) -> None:
    post_id = int(data.popularity_rank[len(data.posts) // 2])
    key = post_key(post_id)
    with MetaClient(mc_address) as mc, PostStore(dsn) as db, MetaClient(mc_address) as probe:
        probe.delete(key)
        fresh = decode_card(db.render(post_id))
        q0 = db.queries
        card = read_post(mc, db, post_id)
        _expect(
            isinstance(card, (bytes, bytearray)) and card,
            f"read_post({post_id}) returned {type(card).__name__} {str(card)[:60]!r}: return the card's bytes",
        )
        got = decode_card(bytes(card))
        _expect(
            got["id"] == post_id and got["version"] == fresh["version"],
            f"read_post({post_id}) on a cold cache returned post {got.get('id')} version {got.get('version')}; "
            f"Postgres has version {fresh['version']}",
        )
        _expect(
            db.queries - q0 == 1,
            f"a miss on {key} ran {db.queries - q0} queries on Postgres (db.render calls); expected exactly 1",
        )
        cached = probe.get(key)
        _expect(
            cached.hit,
            f"after the miss, memcached has nothing under {key!r}: set the card into the cache "
            "after reading it from Postgres (mc.set(post_key(post_id), card))",
        )
        q1 = db.queries
        again = read_post(mc, db, post_id)
        _expect(
            db.queries == q1,
            f"the second read of {key} ran {db.queries - q1} query(ies) on Postgres although "
            "the card was cached: return the cached value on a hit",
        )
        _expect(bytes(again) == bytes(cached.value or b""), "the second read did not return the cached card")
        version = fresh["version"]
        like_post(mc, db, post_id, user_id=int(data.users[-1][0]))
        now = db.version(post_id)
        _expect(
            now == version + 1,
            f"like_post did not update Postgres: version {version} -> {now} (call db.like(post_id, user_id))",
        )
        after = probe.get(key)
        stale = after.hit and after.value is not None and decode_card(after.value)["version"] < now
        _expect(
            not stale,
            f"after like_post the cache still holds version {version} of {key} while Postgres has "
            f"{now}: invalidate the key (mc.delete(post_key(post_id))) after the database write",
        )
        got = decode_card(bytes(read_post(mc, db, post_id)))
        _expect(got["version"] == now, f"the read after the like returned version {got['version']}, Postgres has {now}")
    print("PASS  exercise: cache-aside read path and invalidation on write")
