"""Lesson 10's exercise check: a learner's ``lease_get`` run against the real memcached and Postgres (cold,
warm and herded), with a message that says what to fix. Re-exported by ``labkit.lessons.thundering_herd``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labkit.datasets.post_store import post_key
from labkit.errors import CheckpointFailed
from labkit.lessons.herd_run import HerdResult, Recompute, run_herd
from labkit.lessons.herd_strategies import from_lease_get
from labkit.memcache_meta import MetaClient


def check_lease_get(
    lease_get: Callable[[MetaClient, str, Callable[[], bytes]], bytes],
    mc_address: Any,
    dsn: str,
    post_id: int,
    *,
    readers: int = 20,
    invalidations: int = 3,
    cost: float = 0.05,
) -> HerdResult | None:
    """Run the learner's ``lease_get(mc, key, recompute) -> bytes`` as ``readers`` concurrent clients
    on the real servers while the key is invalidated; print PASS or raise CheckpointFailed with what
    was measured. Returns the herd run's result (None if the function is not written yet)."""
    try:
        return _check_lease_get(lease_get, mc_address, dsn, post_id, readers, invalidations, cost)
    except NotImplementedError:
        print("Not attempted yet: write lease_get in the cell above, then run this cell again.")
        return None


def _check_lease_get(
    lease_get: Callable[..., bytes],
    mc_address: Any,
    dsn: str,
    post_id: int,
    readers: int,
    invalidations: int,
    cost: float,
) -> HerdResult:
    key = post_key(post_id)
    with MetaClient(mc_address) as mc:
        mc.delete(key)
        calls: list[float] = []
        rc = Recompute(dsn, post_id, 0.0, calls)
        try:
            value = lease_get(mc, key, rc)
            _expect(
                isinstance(value, (bytes, bytearray)) and value,
                f"lease_get on a cold cache returned {type(value).__name__} {str(value)[:60]!r}: return the "
                "value recompute() gave you",
            )
            _expect(
                len(calls) == 1,
                f"lease_get on a cold cache called recompute() {len(calls)} times; expected 1 "
                "(the client that gets W recomputes)",
            )
            held = mc.get(key)
            _expect(
                held.hit,
                f"after lease_get won the lease, memcached holds no value under {key!r}: set it "
                "with the lease's CAS (mc.set(key, value, cas=r.cas))",
            )
            lease_get(mc, key, rc)
            _expect(len(calls) == 1, "lease_get on a warm cache called recompute() again: return r.value on a hit")
        finally:
            rc.close()
    try:
        res = run_herd(
            mc_address,
            dsn,
            post_id,
            from_lease_get(lease_get),
            readers=readers,
            invalidations=invalidations,
            interval=max(0.3, 4 * cost),
            cost=cost,
        )
    except TimeoutError as e:
        raise CheckpointFailed(f"exercise: readers waited forever: {e}") from None
    per = res.db_queries_per_invalidation
    _expect(
        per <= 1.5,
        f"with {readers} concurrent readers, lease_get sent {res.db_queries} recomputes to Postgres "
        f"over {res.invalidations} invalidations ({per:.1f} per invalidation); a lease allows ~1: "
        "only the client whose mg answer has W (r.win) may recompute, a Z answer must wait and retry",
    )
    _expect(
        res.db_queries >= res.invalidations,
        f"only {res.db_queries} recomputes for {res.invalidations} invalidations: readers must recompute "
        "after an invalidation, not keep an old value",
    )
    _expect(res.stale_reads == 0, f"{res.stale_reads} reads returned an older version than Postgres had committed")
    print("PASS  exercise: lease-based get (one recompute per invalidation)")
    return res


def _expect(ok: object, what: str) -> None:  # any truthy value passes
    if not ok:
        raise CheckpointFailed(f"exercise: {what}")
