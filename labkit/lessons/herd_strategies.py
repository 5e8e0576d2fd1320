"""Lesson 10's strategies against a thundering herd, each ``(mc, key, recompute) -> (value, served_stale)`` on
the real memcached's meta protocol: no guard, a lock key, a lease (``mg N`` -> W/Z), serve-stale (``md I`` ->
X). Re-exported by ``labkit.lessons.thundering_herd``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from labkit.memcache_meta import MetaClient

LEASE_TTL = 10  # s: how long a lease / a stale item lives if the winner never sets
LOCK_TTL = 10  # s: the lock key's TTL, so a crashed lock holder doesn't block forever
BACKOFF = 0.005  # s: how long a loser waits before asking again
MAX_WAIT = 10.0  # s: a read that waits longer is a bug (lost lease), not a slow read


Strategy = Callable[[MetaClient, str, Callable[[], bytes]], "tuple[bytes, bool]"]


def _gave_up(key: str) -> TimeoutError:
    return TimeoutError(
        f"a reader waited {MAX_WAIT}s for {key!r}: the client holding the lease/lock never "
        "set the value (did the winner forget to set, or set with the wrong CAS?)"
    )


def no_protection(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """Plain cache-aside: every client that misses goes to the database."""
    r = mc.get(key)
    if r.hit and r.value is not None:
        return r.value, False
    value = recompute()
    mc.set(key, value)
    return value, False


def lock_with_add(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """On a miss, only the client whose ``add lock:<key>`` succeeds recomputes; the others retry."""
    deadline = time.monotonic() + MAX_WAIT
    while True:
        r = mc.get(key)
        if r.hit and r.value is not None:
            return r.value, False
        if mc.set("lock:" + key, b"1", ttl=LOCK_TTL, mode="add").stored:
            try:
                value = recompute()
                mc.set(key, value)
            finally:
                mc.delete("lock:" + key)
            return value, False
        if time.monotonic() > deadline:
            raise _gave_up(key)
        time.sleep(BACKOFF)


def lease(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """``mg N``: the one client that gets W recomputes and sets with its CAS; Z means wait and retry."""
    deadline = time.monotonic() + MAX_WAIT
    while True:
        r = mc.get(key, vivify=LEASE_TTL)
        if r.hit and r.value is not None:
            return r.value, False
        if r.win:
            value = recompute()
            mc.set(key, value, cas=r.cas)  # rejected if the key was invalidated meanwhile: no stale set
            return value, False
        if time.monotonic() > deadline:
            raise _gave_up(key)
        time.sleep(BACKOFF)


def serve_stale(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """Invalidation marks the item stale (``md I``): X readers serve the old value, the W one refreshes."""
    deadline = time.monotonic() + MAX_WAIT
    while True:
        r = mc.get(key, vivify=LEASE_TTL)
        if r.win:  # a miss or a stale item: this client alone refreshes it
            value = recompute()
            mc.set(key, value, cas=r.cas)
            return value, False
        if r.stale and r.value:
            return r.value, True
        if r.hit and r.value is not None:
            return r.value, False
        if time.monotonic() > deadline:  # Z on a real miss (nothing stale to serve): wait
            raise _gave_up(key)
        time.sleep(BACKOFF)


def lease_ignoring_z(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """A broken lease: it asks for one but recomputes on Z too (used to show a checkpoint failing)."""
    r = mc.get(key, vivify=LEASE_TTL)
    if r.hit and r.value is not None:
        return r.value, False
    value = recompute()
    mc.set(key, value)
    return value, False


def from_lease_get(fn: Callable[[MetaClient, str, Callable[[], bytes]], bytes]) -> Strategy:
    """Wrap a learner's ``lease_get(mc, key, recompute) -> bytes`` as a strategy."""

    def strategy(mc: MetaClient, key: str, recompute: Callable[[], bytes]) -> tuple[bytes, bool]:
        return fn(mc, key, recompute), False

    strategy.__name__ = getattr(fn, "__name__", "lease_get")
    return strategy


# how each strategy invalidates: delete, or mark stale
STRATEGIES: dict[str, tuple[Strategy, bool]] = {
    "none": (no_protection, False),
    "lock": (lock_with_add, False),
    "lease": (lease, False),
    "stale": (serve_stale, True),
}
