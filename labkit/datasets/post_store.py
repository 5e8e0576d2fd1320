"""The post store the cache lessons share: post cards rendered from Postgres by a real query, and the
PostStore that counts every database read (so a lesson can show the load a cache takes off Postgres).

A card (caption, author, counts, latest likers) is a few KB; its size sets how many posts a memcached of
N MB holds. Lessons 09 (caching) and 10 (thundering herd) read through it; a later lesson that puts a
cache in front of Postgres should too.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from labkit.datasets import instagram
from labkit.errors import BadParameter
from labkit.services.postgres import fetch_value

# A rendered post card (caption, author, counts, latest likers, markup) is a few KB. The size matters
# for the lesson: it sets how many posts a memcached of N MB holds (about 200 per MB here).
CARD_BYTES = 4000
LEASE_TTL = 30  # seconds a lease (the empty item mg N creates) lives if its winner never sets


def post_key(post_id: int) -> str:
    """The memcached key of a post's card."""
    return f"post:{int(post_id)}"


def decode_card(card: bytes) -> dict[str, Any]:
    """The JSON fields of a cached card (the padding is dropped)."""
    return json.loads(card.rstrip(b" "))


_RENDER_SQL = """
SELECT p.id, p.caption, p.like_count, p.version, u.username,
       ARRAY(SELECT lu.username FROM likes l JOIN users lu ON lu.id = l.user_id
             WHERE l.post_id = p.id ORDER BY l.user_id DESC LIMIT 20)
FROM posts p JOIN users u ON u.id = p.user_id WHERE p.id = %s
"""


def render_card(conn: psycopg.Connection, post_id: int) -> bytes:
    """Run the post-card query on ``conn`` and return the card as bytes, padded to CARD_BYTES."""
    row = conn.execute(_RENDER_SQL, (int(post_id),)).fetchone()
    if row is None:
        raise BadParameter(f"post {post_id} does not exist: pick an id from the loaded dataset")
    pid, caption, likes, version, author, likers = row
    card = json.dumps(
        {"id": pid, "author": author, "caption": caption, "likes": likes, "version": version, "likers": likers}
    ).encode()
    return card.ljust(CARD_BYTES)


class PostStore:
    """Posts in Postgres, with a count of the queries that actually reached Postgres.

    One connection per store (a store is one client's connection; give each thread its own).
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.queries = 0  # render() calls that ran a query on Postgres

    def render(self, post_id: int) -> bytes:
        """Run the post-card query and return the card as bytes, padded to CARD_BYTES."""
        self.queries += 1
        return render_card(self.conn, post_id)

    def like(self, post_id: int, user_id: int) -> int:
        """A user likes a post: one transaction; returns the post's new version."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO likes (post_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (int(post_id), int(user_id)),
            )
            row = self.conn.execute(
                "UPDATE posts SET like_count = like_count + 1, version = version + 1 WHERE id = %s RETURNING version",
                (int(post_id),),
            ).fetchone()
        if row is None:
            raise BadParameter(f"post {post_id} does not exist: pick an id from the loaded dataset")
        return int(row[0])

    def version(self, post_id: int) -> int:
        """The post's current version in Postgres (not counted as a read query)."""
        return int(fetch_value(self.conn, "SELECT version FROM posts WHERE id = %s", (int(post_id),)))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PostStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare(dsn: str, profile: str | None = None, seed: int = 2010) -> instagram.InstagramData:
    """Generate the dataset and load it into Postgres (reused when the same one is already loaded)."""
    data = instagram.generate(profile, seed=seed)
    tag = json.dumps({"seed": seed, **{k: v for k, v in data.summary().items() if k != "likes on top 1% of posts"}})
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS labkit_datasets (name text PRIMARY KEY, tag text NOT NULL)")
        row = conn.execute("SELECT tag FROM labkit_datasets WHERE name = 'instagram'").fetchone()
        if row is None or row[0] != tag:
            instagram.load_postgres(conn, data)
            conn.execute(
                "INSERT INTO labkit_datasets VALUES ('instagram', %s) "
                "ON CONFLICT (name) DO UPDATE SET tag = excluded.tag",
                (tag,),
            )
        conn.commit()
    return data
