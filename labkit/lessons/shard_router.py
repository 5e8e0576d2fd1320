"""Lesson 03's logical shards and their map: ``shard = user_id % n_shards``, and shard -> server.

Each logical shard is a Postgres schema ``shard_NNNN`` with the same tables and its own ID function
(:mod:`labkit.ids`): :func:`ensure_shards` creates the missing ones on a server in one transaction. The
:class:`Router` keeps the map in ``public.shard_map`` on the first server (the directory), caches it, and
tracks writes in flight per shard so a move can freeze one shard while it switches the map. The SQL every
experiment sends to a shard (:func:`insert_sql`, :func:`feed_sql`) lives here too.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from labkit import ids
from labkit.errors import BadParameter
from labkit.lessons.shard_pool import schema

__all__ = [
    "PHOTOS_PER_USER",
    "USERS_PER_SHARD",
    "Router",
    "ensure_shards",
    "existing_shards",
    "feed_sql",
    "insert_sql",
    "layout_table",
    "seed_photos",
]

PHOTOS_PER_USER = 3  # seed photos, so feed reads return rows


USERS_PER_SHARD = 4


def _shard_ddl(shard: int) -> str:
    s = schema(shard)
    return (
        f"CREATE SCHEMA IF NOT EXISTS {s};"
        + ids.plpgsql(s, shard)
        + f"CREATE TABLE IF NOT EXISTS {s}.photos (id bigint PRIMARY KEY DEFAULT {s}.next_id(), "
        "user_id bigint NOT NULL, token bigint NOT NULL DEFAULT 0);"
        f"CREATE INDEX IF NOT EXISTS photos_user_id ON {s}.photos (user_id, id DESC);"
    )


def _seed_sql(shard: int, n_shards: int, users: int, photos: int) -> str:
    # users of this shard: shard, shard + n, shard + 2n, ...; each gets `photos` photos
    return (
        f"INSERT INTO {schema(shard)}.photos (user_id) SELECT {shard} + {n_shards} * u "
        f"FROM generate_series(0, {users - 1}) u, generate_series(1, {photos}) p;"
    )


def existing_shards(dsn: str) -> set[int]:
    """The logical shards (schemas with a photos table) present on one server."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = 'photos' AND table_schema LIKE 'shard\\_%'"
        ).fetchall()
    return {int(r[0][6:]) for r in rows if r[0][6:].isdigit()}


def ensure_shards(dsn: str, shards: Sequence[int], n_shards: int, *, seed: bool = True) -> int:
    """Create the missing shard schemas on one server in one transaction (and seed their photos);
    return how many were created. One transaction: hundreds of small DDL statements cost one commit."""
    missing = sorted(set(shards) - existing_shards(dsn))
    if not missing:
        return 0
    with psycopg.connect(dsn) as conn:
        for i in range(0, len(missing), 128):
            part = missing[i : i + 128]
            conn.execute("".join(_shard_ddl(s) for s in part))
            if seed:
                conn.execute("".join(_seed_sql(s, n_shards, USERS_PER_SHARD, PHOTOS_PER_USER) for s in part))
        conn.commit()
    return len(missing)


def seed_photos(dsn: str, shard: int, n_shards: int, users: int, photos: int) -> None:
    """Add ``photos`` photos for each of the first ``users`` users of a shard."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_seed_sql(shard, n_shards, users, photos))


class Router:
    """user -> logical shard -> physical server, with the map kept in ``public.shard_map`` on the
    first server (the directory) and cached here.

    Writers ask :meth:`begin_write` for a server and call :meth:`end_write` after the write; the
    shard move uses :meth:`freeze` to wait for in-flight writes of one shard and hold new ones while
    it switches the map. Counts of writes per (shard, server) let the lesson prove that no write went
    to a shard's old location after a switch.
    """

    def __init__(self, dsns: Sequence[str], n_shards: int, mapping: Sequence[int] | None = None) -> None:
        if isinstance(n_shards, bool) or not isinstance(n_shards, int) or not 1 <= n_shards <= ids.MAX_SHARDS:
            raise BadParameter(
                f"n_shards={n_shards!r}: Instagram IDs hold 13 bits of shard, so use 1..8192 logical shards"
            )
        if not dsns:
            raise BadParameter("Router needs at least one server DSN: pass sharding.servers(st, 4)")
        self.dsns = list(dsns)
        self.n_shards = n_shards
        self.map = list(mapping) if mapping is not None else self.spread(len(self.dsns))
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._frozen: set[int] = set()
        self._inflight = [0] * n_shards
        self.writes: dict[tuple[int, int], int] = {}
        self.version = 0

    def spread(self, k: int) -> list[int]:
        """Contiguous ranges of shards over the first ``k`` servers (as Instagram pre-split its shards)."""
        if not 1 <= k <= len(self.dsns):
            raise BadParameter(f"servers={k}: this router knows {len(self.dsns)} servers; use 1..{len(self.dsns)}")
        return [s * k // self.n_shards for s in range(self.n_shards)]

    # -- the map ---------------------------------------------------------------------------------
    def shard_of(self, user_id: int) -> int:
        return user_id % self.n_shards

    def server_of(self, user_id: int) -> int:
        return self.map[user_id % self.n_shards]

    def assign(self, mapping: Sequence[int]) -> None:
        """Use a new map (one server index per shard) and store it in the directory."""
        if len(mapping) != self.n_shards or not all(0 <= m < len(self.dsns) for m in mapping):
            raise BadParameter(
                f"a map needs one server index in 0..{len(self.dsns) - 1} for each of the {self.n_shards} shards"
            )
        with self._lock:
            self.map = list(mapping)
            self.version += 1
        self.save()

    def save(self) -> None:
        with psycopg.connect(self.dsns[0], autocommit=True) as conn, conn.transaction():
            conn.execute(
                "CREATE TABLE IF NOT EXISTS public.shard_map (shard int PRIMARY KEY, server int NOT "
                "NULL, n_shards int NOT NULL)"
            )
            conn.execute("TRUNCATE public.shard_map")
            with conn.cursor().copy("COPY public.shard_map FROM STDIN") as cp:
                for s, m in enumerate(self.map):
                    cp.write_row((s, m, self.n_shards))

    def move(self, shard: int, server: int) -> None:
        """Point one shard at another server: one row of the directory and the cached map."""
        with psycopg.connect(self.dsns[0], autocommit=True) as conn:
            conn.execute("UPDATE public.shard_map SET server = %s WHERE shard = %s", (server, shard))
        with self._lock:
            self.map[shard] = server
            self.version += 1

    def ensure(self, mappings: Sequence[Sequence[int]] | None = None, *, seed: bool = True) -> dict[int, int]:
        """Create every shard's schema on the server the map (or each of ``mappings``) assigns it to,
        servers in parallel; return the number created per server."""
        want: dict[int, list[int]] = {}
        for mapping in mappings if mappings is not None else [self.map]:
            for s, m in enumerate(mapping):
                want.setdefault(m, []).append(s)
        with ThreadPoolExecutor(max_workers=len(want)) as pool:
            futs = {
                m: pool.submit(ensure_shards, self.dsns[m], shards, self.n_shards, seed=seed)
                for m, shards in want.items()
            }
        self.save()
        return {m: f.result() for m, f in futs.items()}

    # -- writes, freezes --------------------------------------------------------------------------
    def begin_write(self, shard: int) -> int | None:
        """The server for a write to ``shard``, or None while the shard is frozen (retry shortly)."""
        with self._lock:
            if shard in self._frozen:
                return None
            self._inflight[shard] += 1
            server = self.map[shard]
            self.writes[(shard, server)] = self.writes.get((shard, server), 0) + 1
            return server

    def end_write(self, shard: int) -> None:
        with self._cond:
            self._inflight[shard] -= 1
            if self._inflight[shard] == 0:
                self._cond.notify_all()

    def freeze(self, shard: int, timeout: float = 10.0) -> None:
        """Hold new writes to ``shard`` and wait until the ones in flight have finished."""
        with self._cond:
            self._frozen.add(shard)
            if not self._cond.wait_for(lambda: self._inflight[shard] == 0, timeout):
                self._frozen.discard(shard)
                raise TimeoutError(f"writes to shard {shard} did not finish within {timeout} s")

    def unfreeze(self, shard: int) -> None:
        with self._lock:
            self._frozen.discard(shard)

    def writes_to(self, shard: int, server: int) -> int:
        with self._lock:
            return self.writes.get((shard, server), 0)


def insert_sql(shard: int) -> str:
    return f"INSERT INTO {schema(shard)}.photos (user_id, token) VALUES (%s, %s) RETURNING id"


def feed_sql(shard: int, limit: int = 10) -> str:
    return f"SELECT id FROM {schema(shard)}.photos WHERE user_id = %s ORDER BY id DESC LIMIT {limit}"


def layout_table(router: Router) -> Any:
    """Which logical shards live on which server."""
    import pandas as pd

    rows = []
    for j, dsn in enumerate(router.dsns):
        mine = [s for s, m in enumerate(router.map) if m == j]
        rows.append(
            {
                "server": j + 1,
                "port": psycopg.conninfo.conninfo_to_dict(dsn).get("port"),
                "logical shards": len(mine),
                "schemas": f"{schema(mine[0])} .. {schema(mine[-1])}" if mine else "-",
            }
        )
    return pd.DataFrame(rows).set_index("server")
