"""Reference solution of lesson 03's exercise: decode an Instagram ID."""

from __future__ import annotations

EPOCH_MS = 1314220021721


def decode_id(id_: int) -> tuple[int, int, int]:
    unix_ms = (id_ >> 23) + EPOCH_MS  # the top 41 bits: ms since Instagram's epoch
    shard = (id_ >> 10) & 0x1FFF  # the next 13 bits
    seq = id_ & 0x3FF  # the last 10 bits: nextval % 1024
    return unix_ms, shard, seq
