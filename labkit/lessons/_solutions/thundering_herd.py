"""Reference solution of lesson 10's exercise: a lease-based get."""

from __future__ import annotations

import time
from collections.abc import Callable

from labkit.memcache_meta import MetaClient


def lease_get(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> bytes:
    for _ in range(2000):  # ~10 s of 5 ms back-offs, then give up loudly
        r = mc.get(key, vivify=10)
        if r.hit and r.value is not None:
            return r.value
        if r.win:
            value = recompute()
            mc.set(key, value, cas=r.cas)
            return value
        time.sleep(0.005)  # Z: another client holds the lease; its value will be there shortly
    raise TimeoutError(f"no value for {key} after 10 s of waiting on a lease")
