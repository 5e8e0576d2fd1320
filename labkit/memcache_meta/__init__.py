"""A small client for memcached's meta protocol (``mg``/``ms``/``md``/``mn``).

Why our own: the thundering-herd and caching lessons need the lease (``N`` -> ``W``/``Z``) and
serve-stale (``md I`` -> ``X``) flags, and the load drivers need an asyncio client that pipelines
requests from many tasks over one connection. The sync :class:`MetaClient` and the asyncio
:class:`AsyncMetaClient` share one core: the ``encode_*`` functions build request bytes and
:class:`ResponseReader` parses response bytes, so both twins speak exactly the same protocol.

Example::

    with MetaClient(("127.0.0.1", 11211)) as mc:
        r = mc.get("user:1", vivify=30)      # miss -> r.win is True: this client recomputes
        mc.set("user:1", b"alice", ttl=60)
        mc.delete("user:1", invalidate=True) # mark stale: the next get sees r.stale and r.win

Two modules: ``protocol`` (request encoding, response parsing, results; no I/O) and ``client`` (the sync and
asyncio clients, addresses and key prefixes). Import from ``labkit.memcache_meta``: it re-exports both.
"""

from __future__ import annotations

from labkit.memcache_meta.client import AsyncMetaClient, MetaClient, address_of, key_prefix_for, register_prefix
from labkit.memcache_meta.protocol import (
    MetaError,
    MetaResult,
    ResponseReader,
    encode_delete,
    encode_get,
    encode_noop,
    encode_set,
    validate_key,
)

__all__ = [
    "MetaResult",
    "MetaError",
    "MetaClient",
    "AsyncMetaClient",
    "ResponseReader",
    "validate_key",
    "encode_get",
    "encode_set",
    "encode_delete",
    "encode_noop",
    "register_prefix",
    "key_prefix_for",
    "address_of",
]
