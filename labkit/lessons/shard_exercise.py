"""Lesson 03's exercise self-check: the learner's ``decode_id`` on IDs the real servers generate, edge cases
included (shard 0, the last shard, the sequence wrapping from 1023 to 0)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg

from labkit import ids
from labkit.errors import CheckpointFailed
from labkit.lessons.shard_pool import schema
from labkit.lessons.shard_router import Router
from labkit.services.postgres import fetch_value

__all__ = ["check_decoder"]


def _expect(ok: object, what: str) -> None:  # any truthy value passes
    if not ok:
        raise CheckpointFailed(f"exercise: {what}")


def check_decoder(decode_id: Callable[[int], tuple[int, int, int]], router: Router, *, samples: int = 40) -> None:
    """Run the learner's ``decode_id(id) -> (unix_ms, shard, seq)`` on IDs the real servers generate:
    the shards and sequences are known, and each ID's time must fall within its insert's window.
    Prints PASS, or raises CheckpointFailed with the first wrong answer; "Not attempted yet" while the
    function still raises NotImplementedError."""
    try:
        _check_decoder(decode_id, router, samples)
    except NotImplementedError:
        print("Not attempted yet: write decode_id in the cell above, then run this cell again.")


def _generated(router: Router, samples: int) -> list[tuple[int, int, int, float, float]]:
    """(id, shard, seq, sent_ms, acked_ms) for IDs generated on real servers, including the edge cases
    shard 0, the last shard, and sequence values 1023 and 0 around the wrap."""
    rng = np.random.default_rng(3)
    shards = sorted({0, router.n_shards - 1, *rng.integers(0, router.n_shards, samples - 4).tolist()})
    out = []
    for s in shards:
        with psycopg.connect(router.dsns[router.map[s]], autocommit=True) as conn:
            sch = schema(s)
            wrap = s in (0, router.n_shards - 1)
            if wrap:  # the next two values are ...1023 then ...0: the 10 sequence bits wrap around
                last = fetch_value(conn, f"SELECT last_value FROM {sch}.id_seq")
                conn.execute(f"SELECT setval('{sch}.id_seq', %s)", (last + 1022 - last % 1024,))
            for _ in range(2 if wrap else 1):
                t0 = time.time() * 1000
                id_ = fetch_value(conn, f"SELECT {sch}.next_id()")
                t1 = time.time() * 1000
                seq = fetch_value(conn, f"SELECT last_value FROM {sch}.id_seq") % 1024
                out.append((int(id_), s, int(seq), t0, t1))
    return out


def _check_decoder(decode_id: Callable[[int], Any], router: Router, samples: int) -> None:
    cases = _generated(router, samples)
    for id_, shard, seq, t0, t1 in cases:
        got = decode_id(id_)
        _expect(
            isinstance(got, tuple) and len(got) == 3,
            f"decode_id({id_}) returned {got!r}: return a tuple (unix_ms, shard, seq)",
        )
        unix_ms, g_shard, g_seq = got
        _expect(
            g_seq == seq,
            f"decode_id({id_}) gave seq {g_seq}, but Postgres used {seq} (nextval % 1024): "
            "the sequence is the lowest 10 bits, id & 1023",
        )
        _expect(
            g_shard == shard,
            f"decode_id({id_}) gave shard {g_shard}, but it came from shard {shard}: the "
            "shard is the 13 bits above the sequence, (id >> 10) & 8191",
        )
        _expect(
            t0 - 1000 <= unix_ms <= t1 + 1000,
            f"decode_id({id_}) gave {unix_ms} ms, but the ID was made between {t0:.0f} and {t1:.0f} "
            f"(Unix ms): the time is id >> 23, in ms since Instagram's epoch {ids.EPOCH_MS}; add the epoch",
        )
    print(f"PASS  exercise: decode_id reads time, shard and sequence of {len(cases)} IDs made by Postgres")
