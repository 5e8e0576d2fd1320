"""Lesson 09's stale-set race: two clients interleaved so that a delete lands between a miss's database read
and its set; reproduced with plain get/set, prevented by a meta-protocol lease (``mg N`` + ``ms C``).
Re-exported by ``labkit.lessons.caching``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labkit.datasets import instagram
from labkit.datasets.post_store import LEASE_TTL, PostStore, decode_card, post_key
from labkit.errors import BadParameter
from labkit.memcache_meta import MetaClient

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class RaceOutcome:
    """One interleaving of a reader and a writer on one post."""

    fixed: bool
    reader_saw_version: int  # the version the reader read from Postgres on its miss
    db_version: int  # the version in Postgres after the writer committed
    set_status: str  # memcached's answer to the reader's (late) set
    cached_version: int | None  # what the cache holds at the end (None: nothing cached)

    @property
    def stale(self) -> bool:
        """The cache holds an older version than Postgres: every later reader gets stale data."""
        return self.cached_version is not None and self.cached_version < self.db_version


def _race_once(mc_address: Any, dsn: str, post_id: int, user_id: int, fixed: bool) -> RaceOutcome:
    key = post_key(post_id)
    read_done, write_done = threading.Event(), threading.Event()
    box: dict[str, Any] = {}
    errors: list[BaseException] = []

    def reader() -> None:  # client A: a cache miss that reads Postgres, then stalls before its set
        try:
            with MetaClient(mc_address) as mc, PostStore(dsn) as db:
                r = mc.get(key, vivify=LEASE_TTL) if fixed else mc.get(key)
                assert not r.hit, "the race starts from a miss"
                card = db.render(post_id)
                box["read_version"] = decode_card(card)["version"]
                read_done.set()
                if not write_done.wait(10):
                    raise TimeoutError("writer did not finish")
                # the fix: set only if our lease (the item mg N created, with its CAS) is still there
                res = mc.set(key, card, cas=r.cas) if fixed else mc.set(key, card)
                box["set_status"] = res.status
        except BaseException as e:  # surfaced in the caller's thread
            errors.append(e)
            read_done.set()

    def writer() -> None:  # client B: update Postgres, then invalidate, while A is stalled
        try:
            with MetaClient(mc_address) as mc, PostStore(dsn) as db:
                if not read_done.wait(10):
                    raise TimeoutError("reader did not read")
                box["db_version"] = db.like(post_id, user_id)
                mc.delete(key)
        except BaseException as e:
            errors.append(e)
        finally:
            write_done.set()

    with MetaClient(mc_address) as mc:
        mc.delete(key)
    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    with MetaClient(mc_address) as mc:
        r = mc.get(key)
    cached = decode_card(r.value)["version"] if r.hit and r.value else None
    return RaceOutcome(fixed, box["read_version"], box["db_version"], box["set_status"], cached)


def stale_set_race(
    mc_address: Any, dsn: str, data: instagram.InstagramData, *, fixed: bool, trials: int = 5
) -> list[RaceOutcome]:
    """Reproduce the stale-set race ``trials`` times (on different posts) with or without the lease fix.

    The interleaving is forced with events, so the outcome does not depend on timing: A misses and
    reads version v from Postgres; B commits v+1 and deletes the key; only then does A set its card.
    Without the fix memcached now holds v forever (until TTL/eviction). With the fix A's set carries the
    CAS of the lease it got with ``mg ... N``; B's delete removed that lease, so memcached answers NF
    and A's stale card is never stored.
    """
    if trials < 1:
        raise BadParameter(f"trials={trials}: use 1 or more")
    n_users = len(data.users)
    out = []
    for i in range(trials):
        post_id = int(data.popularity_rank[i % len(data.posts)])
        out.append(
            _race_once(mc_address, dsn, post_id, user_id=1 + (7919 * (i + 1 + int(fixed) * 131)) % n_users, fixed=fixed)
        )
    return out


def race_table(*runs: list[RaceOutcome]) -> pd.DataFrame:
    """The interleavings of :func:`stale_set_race`, one row each."""
    import pandas as pd

    rows = [
        {
            "lease fix": o.fixed,
            "reader read version": o.reader_saw_version,
            "Postgres version": o.db_version,
            "reader's late set": o.set_status,
            "cached version": o.cached_version,
            "stale": o.stale,
        }
        for run in runs
        for o in run
    ]
    df = pd.DataFrame(rows)
    df["cached version"] = df["cached version"].astype("Int64")
    return df


def check_race(naive: list[RaceOutcome], fixed: list[RaceOutcome]) -> None:
    """Claims: the stale-set race leaves stale data without the fix, and never with the lease fix."""
    from labkit.checkpoints import checkpoint

    n_stale = sum(o.stale for o in naive)
    f_stale = sum(o.stale for o in fixed)
    checkpoint(
        "the stale-set race is reproduced with plain get/set",
        n_stale,
        at_least=len(naive),
        context=f"{n_stale} of {len(naive)} interleavings left a stale card",
    )
    checkpoint(
        "with a lease (mg N, ms C) the race leaves no stale data",
        f_stale,
        at_most=0,
        context=f"{f_stale} of {len(fixed)} interleavings left a stale card; set answers "
        f"{sorted({o.set_status for o in fixed})}",
    )
