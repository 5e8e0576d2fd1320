"""labkit.ids: Instagram's 64-bit IDs in Python agree bit for bit with the PL/pgSQL function on a
real Postgres, and reproduce the 2012 post's worked example."""

from __future__ import annotations

import time

import psycopg
import pytest

from labkit import ids
from labkit.errors import BadParameter


def test_post_worked_example():
    ex = ids.post_example()
    assert ex["shard"] == 1341 and ex["seq"] == 905  # 31341 % 2000, 5001 % 1024
    assert ex["id after time bits"] == 1387263000 << 23
    assert ex["id"] == (1387263000 << 23) | (1341 << 10) | 905 == 11637205501278089
    d = ids.decode(ex["id"])
    assert (d.ms_since_epoch, d.shard, d.seq) == (1387263000, 1341, 905)


def test_fields_are_41_13_10_bits_and_round_trip():
    assert ids.encode((1 << 40) - 1, 8191, 1023, since_epoch=True) == (1 << 63) - 1  # every bit below the sign
    assert ids.encode((1 << 41) - 1, 8191, 1023, since_epoch=True) == -1  # all 64 bits set
    assert ids.decode(-1) == ids.DecodedId((1 << 41) - 1, 8191, 1023)
    for ms, shard, seq in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (123456789, 4321, 1000)]:
        d = ids.decode(ids.encode(ms, shard, seq, since_epoch=True))
        assert (d.ms_since_epoch, d.shard, d.seq) == (ms, shard, seq)
    assert (
        ids.encode(0, 0, 1, since_epoch=True)
        < ids.encode(0, 1, 0, since_epoch=True)
        < ids.encode(1, 0, 0, since_epoch=True)
    )
    d = ids.decode(ids.encode(ids.EPOCH_MS + 5000, 7, 3))
    assert d.unix_ms == ids.EPOCH_MS + 5000 and d.time.year == 2011


def test_bad_fields_name_the_range():
    with pytest.raises(BadParameter, match=r"shard=8192: must be an integer in \[0, 8191\]"):
        ids.encode(0, 8192, 0, since_epoch=True)
    with pytest.raises(BadParameter, match=r"seq \(nextval % 1024\)=1024"):
        ids.encode(0, 0, 1024, since_epoch=True)
    with pytest.raises(BadParameter, match="milliseconds since the epoch"):
        ids.encode(ids.EPOCH_MS - 1, 0, 0)
    with pytest.raises(BadParameter, match="lower-case"):
        ids.plpgsql("Bad-Name", 1)


def test_plpgsql_function_agrees_bit_for_bit(pg):
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        for shard in (0, 5, 8191):
            sch = f"idtest_{shard}"
            conn.execute(f"DROP SCHEMA IF EXISTS {sch} CASCADE")
            conn.execute(f"CREATE SCHEMA {sch}")
            conn.execute(ids.plpgsql(sch, shard))
            conn.execute(f"SELECT setval('{sch}.id_seq', 1021)")  # next: 1022, 1023, then the wrap to 0
            prev = 0
            for expected_seq in (1022, 1023, 0, 1):
                t0 = int(time.time() * 1000)
                id_ = conn.execute(f"SELECT {sch}.next_id()").fetchone()[0]
                t1 = int(time.time() * 1000) + 1
                d = ids.decode(id_)
                assert (d.shard, d.seq) == (shard, expected_seq)
                assert t0 - 1 <= d.unix_ms <= t1
                assert ids.encode(d.unix_ms, d.shard, d.seq) == id_  # the same 64 bits, rebuilt in Python
                if expected_seq != 0:
                    assert id_ > prev
                prev = id_
            conn.execute(f"DROP SCHEMA {sch} CASCADE")
        # after 2^40 ms (2046) the same arithmetic sets the sign bit of Postgres' bigint: negative IDs
        late = conn.execute("SELECT ((%s::bigint) << 23) | (8191 << 10) | 1023", (1 << 40,)).fetchone()[0]
        assert late == ids.encode(1 << 40, 8191, 1023, since_epoch=True) < 0
