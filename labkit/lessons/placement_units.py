"""Lesson 07's units and their moves on the two-continent store (:mod:`labkit.datasets.geo_store`).

A unit's rows live in ``geo_us.posts`` or ``geo_eu.posts`` (each on one continent); the directory
``geo_global.directory (unit, home, epoch)`` is on both, written at EACH_QUORUM and read at LOCAL_QUORUM, so a
read that starts after a switch sees it. A write is acknowledged only after the directory still names the home
it wrote to (else it writes again at the new home, same id: no duplicate). :func:`migrate` copies, switches the
directory (epoch + 1), copies again the rows writers put at the old home meanwhile, then deletes the old copy.
"""

from __future__ import annotations

import uuid
from collections import Counter

from labkit.datasets.geo_store import REGIONS, Geo
from labkit.errors import BadParameter

__all__ = ["lookup", "migrate", "prepare", "verify_units", "write_row"]


def prepare(geo: Geo, units: int = 24, rows: int = 5, home: str = "us", seed: int = 1) -> dict[int, str]:
    """Empty the lesson's tables and put ``units`` units of ``rows`` rows each at ``home`` (the legacy US)."""
    from cassandra.concurrent import execute_concurrent_with_args

    if not 2 <= units <= 1000:
        raise BadParameter(f"units={units}: use 2-1000 units")
    s = geo.sessions["us"]
    s.execute("CREATE TABLE IF NOT EXISTS geo_global.directory (unit int PRIMARY KEY, home text, epoch int)")
    for r in REGIONS:
        s.execute(
            f"CREATE TABLE IF NOT EXISTS geo_{r}.posts (unit int, id uuid, wid text, body text, PRIMARY KEY (unit, id))"
        )
    geo.cluster.wait_for_schema_agreement()
    for t in ("geo_global.directory", "geo_us.posts", "geo_eu.posts"):
        s.execute(f"TRUNCATE {t}", timeout=60)
    d = geo.statement("us", "INSERT INTO geo_global.directory (unit, home, epoch) VALUES (?, ?, 0)", "EACH_QUORUM")
    execute_concurrent_with_args(s, d, [(u, home) for u in range(units)], concurrency=32)
    ins = geo.statement("us", f"INSERT INTO geo_{home}.posts (unit, id, wid, body) VALUES (?, ?, ?, ?)", "QUORUM")
    execute_concurrent_with_args(
        s,
        ins,
        [(u, uuid.uuid4(), f"seed-{u}-{i}", "b" * 200) for u in range(units) for i in range(rows)],
        concurrency=32,
    )
    return {u: home for u in range(units)}


def lookup(geo: Geo, region: str, unit: int) -> tuple[str, int]:
    row = (
        geo.sessions[region]
        .execute(
            geo.statement(region, "SELECT home, epoch FROM geo_global.directory WHERE unit = ?", "LOCAL_QUORUM"),
            (unit,),
        )
        .one()
    )
    return row[0], row[1]


def write_row(geo: Geo, region: str, unit: int, row_id: uuid.UUID, wid: str) -> str:
    """Append one row to ``unit`` from ``region``; return the home it was acknowledged at."""
    for _ in range(10):
        home, epoch = lookup(geo, region, unit)
        geo.sessions[region].execute(
            geo.statement(region, f"INSERT INTO geo_{home}.posts (unit, id, wid, body) VALUES (?, ?, ?, ?)", "QUORUM"),
            (unit, row_id, wid, "w" * 200),
        )
        if lookup(geo, region, unit)[1] == epoch:  # nobody switched the unit while we wrote: acknowledged
            return home
    raise TimeoutError(f"unit {unit} kept moving while a write tried to land")


def migrate(
    geo: Geo,
    unit: int,
    src: str,
    dst: str,
    *,
    second_pass: bool = True,
    fresh_ids: bool = False,
    via: str | None = None,
) -> int:
    """Copy -> switch the directory -> copy the rows that landed meanwhile -> delete the old copy. Returns
    rows copied. ``second_pass=False`` and ``fresh_ids=True`` are the broken variants the tests show failing."""
    region = via or dst
    sel = geo.statement(region, f"SELECT id, wid, body FROM geo_{src}.posts WHERE unit = ?", "QUORUM")
    ins = geo.statement(region, f"INSERT INTO geo_{dst}.posts (unit, id, wid, body) VALUES (?, ?, ?, ?)", "QUORUM")
    s = geo.sessions[region]

    def copy() -> int:
        from cassandra.concurrent import execute_concurrent_with_args

        rows = list(s.execute(sel, (unit,)))
        execute_concurrent_with_args(
            s, ins, [(unit, uuid.uuid4() if fresh_ids else r.id, r.wid, r.body) for r in rows], concurrency=16
        )
        return len(rows)

    n = copy()
    _, epoch = lookup(geo, region, unit)
    s.execute(
        geo.statement(region, "UPDATE geo_global.directory SET home = ?, epoch = ? WHERE unit = ?", "EACH_QUORUM"),
        (dst, epoch + 1, unit),
    )
    if second_pass:
        n += copy()
    s.execute(geo.statement(region, f"DELETE FROM geo_{src}.posts WHERE unit = ?", "QUORUM"), (unit,))
    return n


def verify_units(geo: Geo, acked: list[tuple[int, str]]) -> dict[str, int]:
    """Read every unit at its home: acknowledged writes missing (lost), writes present twice (duplicated)."""
    units = sorted({u for u, _ in acked})
    lost = dup = 0
    for u in units:
        home, _ = lookup(geo, "us", u)
        wids = Counter(
            r.wid
            for r in geo.sessions["us"].execute(
                geo.statement("us", f"SELECT wid FROM geo_{home}.posts WHERE unit = ?", "QUORUM"), (u,)
            )
        )
        dup += sum(c - 1 for c in wids.values() if c > 1)
        lost += sum(1 for uu, w in acked if uu == u and wids[w] == 0)
    return {"acknowledged": len(acked), "lost": lost, "duplicated": dup}
