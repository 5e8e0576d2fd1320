"""Instagram's 64-bit IDs: 41 bits of milliseconds, 13 bits of logical shard, 10 bits of sequence.

Instagram generated every photo's primary key inside Postgres, in the logical shard (schema) that
stores the photo, with a PL/pgSQL function (Instagram Engineering, "Sharding & IDs at Instagram",
2012)::

    id = (now_ms - EPOCH_MS) << 23  |  shard_id << 10  |  nextval(seq) % 1024

Why this shape: the IDs sort by time (the high bits are the clock), so "latest photos first" is an
index scan on the primary key and a merge of several shards' results is a merge by ID; the shard is
inside the ID, so any ID says where its row lives without a lookup; and no central ID service is on
the write path (each shard's sequence is local). :func:`plpgsql` gives the function a shard
installs; :func:`encode`/:func:`decode` are the same arithmetic in Python, bit for bit.

    >>> decode(encode(1387263000, 1341, 5001 % 1024, since_epoch=True)).shard
    1341
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

from labkit.errors import BadParameter

__all__ = [
    "EPOCH_MS",
    "MAX_SHARDS",
    "SEQ_BITS",
    "SHARD_BITS",
    "TIME_BITS",
    "DecodedId",
    "decode",
    "encode",
    "plpgsql",
    "post_example",
]

EPOCH_MS = 1314220021721  # Instagram's custom epoch in the post's function: 2011-08-24 21:07:01.721 UTC
TIME_BITS, SHARD_BITS, SEQ_BITS = 41, 13, 10
MAX_SHARDS = 1 << SHARD_BITS  # 8192 logical shards
_SEQ_MASK = (1 << SEQ_BITS) - 1
_SHARD_MASK = MAX_SHARDS - 1
_TIME_MASK = (1 << TIME_BITS) - 1
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class DecodedId:
    """The three fields of an ID, and the wall-clock time the first one stands for."""

    ms_since_epoch: int
    shard: int
    seq: int
    epoch_ms: int = EPOCH_MS

    @property
    def unix_ms(self) -> int:
        return self.ms_since_epoch + self.epoch_ms

    @property
    def time(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.unix_ms / 1000, tz=_dt.UTC)


def _int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadParameter(f"{name}={value!r}: must be an integer in [{low}, {high}]")
    return value


def encode(ms: int, shard: int, seq: int, *, epoch_ms: int = EPOCH_MS, since_epoch: bool = False) -> int:
    """The ID Postgres would generate at Unix time ``ms`` (milliseconds) in ``shard`` with sequence
    value ``seq`` (already reduced modulo 1024, as the function does). ``since_epoch=True`` takes ``ms``
    as milliseconds since the custom epoch (the post's worked example counts that way)."""
    elapsed = ms if since_epoch else ms - epoch_ms
    _int("milliseconds since the epoch", elapsed, 0, _TIME_MASK)
    _int("shard", shard, 0, _SHARD_MASK)
    _int("seq (nextval % 1024)", seq, 0, _SEQ_MASK)
    bits = (elapsed << (SHARD_BITS + SEQ_BITS)) | (shard << SEQ_BITS) | seq
    # Postgres' bigint is signed: from 2^40 ms after the epoch (the year 2046) the top bit is the sign
    # bit and the function's IDs turn negative. Return exactly what Postgres stores.
    return bits - (1 << 64) if bits >> 63 else bits


def decode(id_: int, *, epoch_ms: int = EPOCH_MS) -> DecodedId:
    """Split an ID into milliseconds since the epoch, logical shard and sequence."""
    _int("id", id_, -(1 << 63), (1 << 63) - 1)
    id_ &= (1 << 64) - 1  # a negative bigint is the same 64 bits
    return DecodedId(id_ >> (SHARD_BITS + SEQ_BITS), (id_ >> SEQ_BITS) & _SHARD_MASK, id_ & _SEQ_MASK, epoch_ms)


def plpgsql(schema: str, shard: int, *, sequence: str = "id_seq", epoch_ms: int = EPOCH_MS) -> str:
    """SQL that creates ``<schema>.<sequence>`` and ``<schema>.next_id()`` for logical shard ``shard``.

    Like the post's function: the sequence's next value modulo 1024, then the clock in milliseconds
    (``clock_timestamp()``, the real time, not the transaction's start), shifted into place. The shard
    number is a constant baked into each schema's copy of the function.
    """
    if not _SCHEMA.match(schema) or not _SCHEMA.match(sequence):
        raise BadParameter(f"schema {schema!r} / sequence {sequence!r}: use lower-case letters, digits and '_'")
    _int("shard", shard, 0, _SHARD_MASK)
    _int("epoch_ms", epoch_ms, 0, 1 << 45)
    return f"""
CREATE SEQUENCE IF NOT EXISTS {schema}.{sequence};
CREATE OR REPLACE FUNCTION {schema}.next_id(OUT result bigint) AS $$
DECLARE
    our_epoch bigint := {epoch_ms};
    seq_id bigint;
    now_millis bigint;
    shard_id int := {shard};
BEGIN
    SELECT nextval('{schema}.{sequence}') % 1024 INTO seq_id;
    SELECT FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) INTO now_millis;
    result := (now_millis - our_epoch) << 23;
    result := result | (shard_id << 10);
    result := result | (seq_id);
END;
$$ LANGUAGE plpgsql;
"""


def post_example() -> dict[str, int]:
    """The worked example of the 2012 post, step by step: 1387263000 ms since the epoch, user 31341
    with 2000 logical shards (shard 31341 % 2000 = 1341), and the table's 5001st ID (5001 % 1024)."""
    ms, user, shards, nextval = 1387263000, 31341, 2000, 5001
    shard, seq = user % shards, nextval % 1024
    step1 = ms << (64 - 41)
    step2 = step1 | shard << (64 - 41 - 13)
    step3 = step2 | seq
    assert step3 == encode(ms, shard, seq, since_epoch=True)
    return {
        "ms since epoch": ms,
        "user id": user,
        "logical shards": shards,
        "shard": shard,
        "nextval": nextval,
        "seq": seq,
        "id after time bits": step1,
        "id after shard bits": step2,
        "id": step3,
    }
