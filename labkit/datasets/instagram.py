"""A deterministic Instagram-like dataset: users, posts and likes with Zipf popularity.

The same seed gives the same data on every machine, so a lesson's numbers are comparable between
learners. Popularity follows a Zipf law (a few celebrities' posts get most likes, a long tail gets
almost none), which is what makes caching work. Sizes follow the run profile (LABKIT_PROFILE=ci
keeps them small).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from labkit.errors import BadParameter
from labkit.load.workload import Zipf

__all__ = ["SIZES", "InstagramData", "generate", "load_postgres", "zipf_probabilities", "zipf_trace"]

# users, posts, likes per profile
SIZES: dict[str, tuple[int, int, int]] = {
    "full": (20_000, 50_000, 400_000),
    "ci": (2_000, 5_000, 30_000),
    "light": (2_000, 5_000, 30_000),
}

_WORDS = [
    "sunset",
    "beach",
    "coffee",
    "brunch",
    "latte",
    "puppy",
    "kitten",
    "hike",
    "city",
    "lights",
    "skyline",
    "tacos",
    "sushi",
    "friends",
    "family",
    "road",
    "trip",
    "mountains",
    "lake",
    "morning",
    "vibes",
    "throwback",
    "weekend",
    "selfie",
    "art",
    "museum",
    "concert",
    "festival",
    "garden",
    "rain",
    "snow",
    "bike",
    "run",
    "yoga",
    "pizza",
    "ramen",
    "dessert",
]


def zipf_probabilities(n: int, s: float) -> np.ndarray:
    """P(rank i) ∝ 1 / i**s for ranks 1..n (s=0 is uniform). Sums to 1. Same law as labkit.load.Zipf."""
    return Zipf(n, s).pmf()


def zipf_trace(n: int, s: float, length: int, seed: int = 0) -> np.ndarray:
    """``length`` ranks (0-based, 0 = most popular) drawn i.i.d. from Zipf(s) over ``n`` keys."""
    if length < 0:
        raise BadParameter(f"trace length {length} must be >= 0")
    return Zipf(n, s).sample(np.random.default_rng(seed), length)


@dataclass
class InstagramData:
    """Rows ready for COPY. ``popularity_rank[i]`` is the post id at Zipf rank i (0 = hottest)."""

    users: list[tuple[int, str, int]]  # (id, username, followers)
    posts: list[tuple[int, int, str, int]]  # (id, user_id, caption, like_count)
    likes: list[tuple[int, int]]  # (post_id, user_id)
    popularity_rank: np.ndarray
    skew: float
    seed: int

    @property
    def post_ids(self) -> np.ndarray:
        return np.array([p[0] for p in self.posts], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        counts = np.array(sorted((p[3] for p in self.posts), reverse=True))
        top = max(1, len(counts) // 100)
        return {
            "users": len(self.users),
            "posts": len(self.posts),
            "likes": len(self.likes),
            "likes on top 1% of posts": round(float(counts[:top].sum() / max(1, counts.sum())), 3),
        }


def generate(
    profile: str | None = None,
    *,
    users: int | None = None,
    posts: int | None = None,
    likes: int | None = None,
    skew: float = 1.0,
    seed: int = 2010,
) -> InstagramData:
    """Generate the dataset. Sizes default to the profile's (``labkit.profile.current()``)."""
    if profile is None:
        from labkit import profile as _profile

        profile = _profile.current()
    if profile not in SIZES:
        raise BadParameter(f"profile {profile!r} unknown: use one of {', '.join(SIZES)}")
    n_users, n_posts, n_likes = (
        users or SIZES[profile][0],
        posts or SIZES[profile][1],
        likes if likes is not None else SIZES[profile][2],
    )
    if n_users < 1 or n_posts < 1 or n_likes < 0:
        raise BadParameter(f"need users >= 1, posts >= 1, likes >= 0 (got {n_users}, {n_posts}, {n_likes})")
    rng = np.random.default_rng(seed)
    # Followers are heavy-tailed too: a few celebrities, many ordinary accounts.
    followers = np.floor(rng.pareto(1.2, n_users) * 50).astype(int)
    users_rows = [(i + 1, f"user{i + 1:06d}", int(followers[i])) for i in range(n_users)]
    # Post authors: celebrities post to more followers, not more often -> uniform authors.
    authors = rng.integers(1, n_users + 1, n_posts)
    # Popularity rank -> post id: a seeded permutation so that the hottest post is not id 1.
    order = rng.permutation(n_posts) + 1
    like_ranks = zipf_trace(n_posts, skew, n_likes, seed=seed + 1)
    like_posts = order[like_ranks]
    like_users = rng.integers(1, n_users + 1, n_likes)
    # One like per (post, user): drop duplicates, keep the first.
    pairs = np.unique(np.stack([like_posts, like_users], axis=1), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=n_posts + 1)
    words = np.array(_WORDS)
    captions = [" ".join(words[rng.integers(0, len(words), 4)]) for _ in range(n_posts)]
    posts_rows = [(i + 1, int(authors[i]), captions[i], int(counts[i + 1])) for i in range(n_posts)]
    likes_rows = [(int(p), int(u)) for p, u in pairs]
    return InstagramData(users_rows, posts_rows, likes_rows, order, float(skew), seed)


SCHEMA = """
DROP TABLE IF EXISTS likes, posts, users CASCADE;
CREATE TABLE users (id bigint PRIMARY KEY, username text NOT NULL, followers int NOT NULL);
CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id),
                    caption text NOT NULL, like_count int NOT NULL DEFAULT 0,
                    version int NOT NULL DEFAULT 1);
CREATE TABLE likes (post_id bigint NOT NULL REFERENCES posts(id), user_id bigint NOT NULL REFERENCES users(id),
                    PRIMARY KEY (post_id, user_id));
"""


def load_postgres(conn: Any, data: InstagramData) -> dict[str, int]:
    """(Re)create users/posts/likes in the connection's database and COPY the rows in.

    ``conn`` is a psycopg 3 connection. Returns the row counts read back from Postgres.
    """
    with conn.cursor() as cur:
        cur.execute(SCHEMA)
        with cur.copy("COPY users (id, username, followers) FROM STDIN") as cp:
            for user in data.users:
                cp.write_row(user)
        with cur.copy("COPY posts (id, user_id, caption, like_count) FROM STDIN") as cp:
            for post in data.posts:
                cp.write_row(post)
        with cur.copy("COPY likes (post_id, user_id) FROM STDIN") as cp:
            for like in data.likes:
                cp.write_row(like)
        cur.execute("ANALYZE users; ANALYZE posts; ANALYZE likes")
        counts = {}
        for t in ("users", "posts", "likes"):
            cur.execute(f"SELECT count(*) FROM {t}")
            counts[t] = cur.fetchone()[0]
    conn.commit()
    return counts
