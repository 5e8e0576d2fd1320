"""Lesson 07 — move each user's data to where it is read (Akkio-style) on a real two-datacenter Cassandra.

Akkio (Facebook, OSDI 2018) splits data into small units ("microshards", here one per user), places each unit in
one region, counts accesses per unit and region, and moves a unit when another region dominates its recent
accesses. This module runs that on lesson 06's cluster:

* Data: ``geo_us.posts`` / ``geo_eu.posts`` (each replicated on one continent only). A unit's rows live in its
  home region's keyspace. The directory ``geo_global.directory (unit, home, epoch)`` is on both continents;
  it is written at EACH_QUORUM and read at LOCAL_QUORUM, so a read that starts after a switch sees it.
* Traffic (through labkit.load): reads look the unit up in the local directory replica, then read its rows at
  QUORUM through the local coordinator — a remote read when the home is on the other continent. Writes append
  rows with client-made ids and are acknowledged only after the directory still names the home they wrote to
  (else they write again at the new home: same id, so no duplicate).
* Migration (:func:`migrate`): copy -> switch the directory (epoch + 1) -> copy again (rows written at the old
  home by writers that had not seen the switch) -> delete the old copy, while the writers keep writing.
* Placement (:func:`run_placement`): rounds of traffic; after each, a policy picks each unit's home from decayed
  access counters; moves run during the next round. Flaps (a unit moved back to a region it left) are counted.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labkit import profile
from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter
from labkit.lessons.localized import REGIONS, Geo, _with_cl
from labkit.load import Uniform, Workload, run

__all__ = [
    "Hysteresis",
    "PlacementResult",
    "check_flapping",
    "check_no_lost_writes",
    "check_policy",
    "check_remote_share",
    "defaults",
    "flaps",
    "migrate",
    "most_accesses",
    "plot_rounds",
    "prepare",
    "replay",
    "run_placement",
    "verify_units",
]

Policy = Callable[[dict[str, float], str], str]


def defaults() -> dict[str, Any]:
    # ops per round, not seconds: each unit gets about 15 reads per round however fast this machine is, so the
    # policy always decides on the same amount of evidence
    return {
        "units": int(profile.pick(48, 16)),
        "rounds": int(profile.pick(4, 3)),
        "ops_per_round": int(profile.pick(900, 300)),
        "clients": 4,
        "skew": 0.95,
        "balanced": 0.2,
        "write_share": 0.2,
        "delay_ms": 40,
        "seed": 1,
    }


# -- placement policies -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hysteresis:
    """Move a unit only when one region has at least ``threshold`` of its recent accesses (and enough of them).

    Why a threshold above 1/2: a unit read evenly from both continents would otherwise follow the noise of each
    window and move back and forth (flap), paying a copy each time for nothing."""

    threshold: float = 0.75
    min_accesses: float = 10.0

    def __call__(self, counts: dict[str, float], current: str) -> str:
        total = sum(counts.values())
        if total < self.min_accesses:
            return current
        best = max(sorted(counts), key=lambda r: counts[r])
        return best if counts[best] / total >= self.threshold else current


def most_accesses(counts: dict[str, float], current: str) -> str:
    """The naive policy: the region with the most recent accesses, whatever the margin (it flaps)."""
    if not counts or sum(counts.values()) == 0:
        return current
    return max(sorted(counts), key=lambda r: (counts[r], r == current))


# -- schema and data ----------------------------------------------------------------------------------------------
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
    d = _with_cl(geo, "us", "INSERT INTO geo_global.directory (unit, home, epoch) VALUES (?, ?, 0)", "EACH_QUORUM")
    execute_concurrent_with_args(s, d, [(u, home) for u in range(units)], concurrency=32)
    ins = _with_cl(geo, "us", f"INSERT INTO geo_{home}.posts (unit, id, wid, body) VALUES (?, ?, ?, ?)", "QUORUM")
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
            _with_cl(geo, region, "SELECT home, epoch FROM geo_global.directory WHERE unit = ?", "LOCAL_QUORUM"),
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
            _with_cl(geo, region, f"INSERT INTO geo_{home}.posts (unit, id, wid, body) VALUES (?, ?, ?, ?)", "QUORUM"),
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
    sel = _with_cl(geo, region, f"SELECT id, wid, body FROM geo_{src}.posts WHERE unit = ?", "QUORUM")
    ins = _with_cl(geo, region, f"INSERT INTO geo_{dst}.posts (unit, id, wid, body) VALUES (?, ?, ?, ?)", "QUORUM")
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
        _with_cl(geo, region, "UPDATE geo_global.directory SET home = ?, epoch = ? WHERE unit = ?", "EACH_QUORUM"),
        (dst, epoch + 1, unit),
    )
    if second_pass:
        n += copy()
    s.execute(_with_cl(geo, region, f"DELETE FROM geo_{src}.posts WHERE unit = ?", "QUORUM"), (unit,))
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
                _with_cl(geo, "us", f"SELECT wid FROM geo_{home}.posts WHERE unit = ?", "QUORUM"), (u,)
            )
        )
        dup += sum(c - 1 for c in wids.values() if c > 1)
        lost += sum(1 for uu, w in acked if uu == u and wids[w] == 0)
    return {"acknowledged": len(acked), "lost": lost, "duplicated": dup}


# -- the experiment -----------------------------------------------------------------------------------------------
@dataclass
class PlacementResult:
    rounds: Any  # one row per round: remote share, latency, bytes, moves
    log: list[tuple[int, int, str]]  # (round, unit, region) of every read: the real access log
    history: dict[int, list[str]]  # unit -> home after each decision (first = initial)
    writes: dict[str, int] = field(default_factory=dict)
    moves: int = 0
    policy: str = ""

    @property
    def flaps(self) -> int:
        return flaps(self.history)


def flaps(history: dict[int, list[str]]) -> int:
    """Moves back to a region the unit had left before (A -> B -> A counts one)."""
    n = 0
    for homes in history.values():
        left: set[str] = set()
        for a, b in itertools.pairwise(homes):
            if a != b:
                if b in left:
                    n += 1
                left.add(a)
    return n


def _pattern(units: int, skew: float, balanced: float, seed: int) -> dict[int, dict[str, float]]:
    """Who reads each unit: half the units mostly from Europe, 30% mostly from the US, ``balanced`` evenly."""
    rng = random.Random(seed)
    order = list(range(units))
    rng.shuffle(order)
    n_bal, n_eu = round(units * balanced), round(units * 0.5)
    out = {}
    for i, u in enumerate(order):
        eu = 0.5 if i < n_bal else skew if i < n_bal + n_eu else 1 - skew
        out[u] = {"us": 1 - eu, "eu": eu}
    return out


def _move_all(geo: Geo, moves: list[tuple[int, str, str]], opts: dict[str, Any], failed: list[BaseException]) -> None:
    try:
        for unit, src, dst in moves:
            migrate(geo, unit, src, dst, **opts)
    except Exception as e:  # noqa: BLE001 - reported by the caller's thread after join()
        failed.append(e)


def run_placement(
    geo: Geo,
    policy: Policy = Hysteresis(),
    *,
    units: int = 16,
    rounds: int = 3,
    ops_per_round: int = 300,
    clients: int = 8,
    skew: float = 0.95,
    balanced: float = 0.2,
    write_share: float = 0.2,
    delay_ms: float = 40,
    decay: float = 0.5,
    seed: int = 1,
    **migrate_opts: Any,
) -> PlacementResult:
    """Rounds of reads and writes from both continents; after each round (but the last) ``policy`` picks each
    unit's home from decayed access counts, and the moves run during the next round while writers write."""
    import pandas as pd

    if not 2 <= rounds <= 20 or not 10 <= ops_per_round <= 100_000:
        raise BadParameter(f"rounds={rounds}, ops_per_round={ops_per_round}: use 2-20 rounds of 10-100000 operations")
    if not 0.5 <= skew <= 1 or not 0 <= balanced <= 0.5 or not 0 <= write_share < 1:
        raise BadParameter("skew in [0.5, 1], balanced in [0, 0.5], write_share in [0, 1)")
    geo.cluster.set_inter_dc_delay(delay_ms)
    placement = prepare(geo, units, seed=seed)
    history = {u: [h] for u, h in placement.items()}
    who = _pattern(units, skew, balanced, seed)
    log: list[tuple[int, int, str]] = []
    acked: list[tuple[int, str]] = []
    counts = {u: {r: 0.0 for r in REGIONS} for u in range(units)}
    rows, total_moves = [], 0
    pending: list[tuple[int, str, str]] = []
    for rnd in range(1, rounds + 1):
        remote: Counter[bool] = Counter()  # True: the read crossed to the other region

        def op(ctx: Any, o: Any, rnd: int = rnd, remote: Counter[bool] = remote) -> None:
            rng = ctx.state.setdefault("rng", random.Random(seed * 1000 + ctx.client + 100 * rnd))
            unit = o.rank
            region = "eu" if rng.random() < who[unit]["eu"] else "us"
            if o.kind == "write":
                wid = f"r{rnd}-c{ctx.client}-{o.seq}"
                write_row(geo, region, unit, uuid.uuid4(), wid)
                acked.append((unit, wid))
                return
            home, _ = lookup(geo, region, unit)
            geo.sessions[region].execute(
                _with_cl(geo, region, f"SELECT id FROM geo_{home}.posts WHERE unit = ?", "QUORUM"), (unit,)
            )
            log.append((rnd, unit, region))
            remote[home != region] += 1
            ctx.count("remote_reads" if home != region else "local_reads")

        moves_now = list(pending)
        failed: list[BaseException] = []
        mover = threading.Thread(target=_move_all, args=(geo, moves_now, migrate_opts, failed))
        b0 = geo.link_bytes()
        mover.start()
        res = run(
            op,
            Workload(
                keys=Uniform(units),
                mix={"read": 1 - write_share, "write": write_share} if write_share else {"read": 1.0},
                clients=clients,
                ops=ops_per_round,
                duration=None,
                seed=seed + rnd,
            ),
            name=f"round {rnd}",
            op_timeout=20,
        )
        mover.join()
        if failed:
            raise failed[0]
        moved, pending = len(moves_now), []
        crossed = geo.link_bytes() - b0
        reads = res.counters.get("remote_reads", 0) + res.counters.get("local_reads", 0)
        p = res.percentiles("read")
        rows.append(
            {
                "round": rnd,
                "reads": reads,
                "remote share": res.counters.get("remote_reads", 0) / max(1, reads),
                "read p50 ms": p["p50"],
                "read p99 ms": p["p99"],
                "errors": res.error_count,
                "KB across link per 1000 ops": crossed / max(1, res.ops) * 1000 / 1024,
                "units moved": moved,
            }
        )
        total_moves += moved
        if rnd == rounds:
            break
        for u in range(units):  # decayed counters: recent rounds weigh most
            for r in REGIONS:
                counts[u][r] *= decay
        for rr, u, r in log:
            if rr == rnd:
                counts[u][r] += 1
        for u in range(units):
            new = policy(dict(counts[u]), placement[u])
            if new not in REGIONS:
                raise BadParameter(f"the policy returned {new!r} for unit {u}: return one of {REGIONS}")
            if new != placement[u]:
                pending.append((u, placement[u], new))
                placement[u] = new
            history[u].append(new)
    writes = verify_units(geo, acked)
    move_rounds = {f"r{int(r['round'])}-" for r in rows if r["units moved"]}
    writes["during moves"] = sum(1 for _, w in acked if w.split("c", 1)[0] in move_rounds)
    return PlacementResult(
        rounds=pd.DataFrame(rows),
        log=log,
        history=history,
        writes=writes,
        moves=total_moves,
        policy=getattr(policy, "__name__", type(policy).__name__),
    )


def replay(
    policy: Policy, log: list[tuple[int, int, str]], windows: int = 8, decay: float = 0.5, start: str = "us"
) -> tuple[dict[int, list[str]], float, float]:
    """Run ``policy`` offline over a real access log cut into ``windows``: the homes it would have chosen, and the
    remote-read share of the log's last round under the initial placement and under the policy's."""
    if not log:
        raise BadParameter("the access log is empty: run the experiment first")
    units = sorted({u for _, u, _ in log})
    home = {u: start for u in units}
    history = {u: [start] for u in units}
    counts = {u: {r: 0.0 for r in REGIONS} for u in units}
    size = max(1, len(log) // windows)
    for w in range(windows):
        for u in units:
            for r in REGIONS:
                counts[u][r] *= decay
        for _, u, r in log[w * size : (w + 1) * size]:
            counts[u][r] += 1
        for u in units:
            home[u] = policy(dict(counts[u]), home[u])
            history[u].append(home[u])
    last = [(u, r) for rr, u, r in log if rr == max(x[0] for x in log)]
    before = sum(1 for u, r in last if r != start) / len(last)
    after = sum(1 for u, r in last if r != home[u]) / len(last)
    return history, before, after


# -- tables, plots, checkpoints ---------------------------------------------------------------------------------
def plot_rounds(res: PlacementResult) -> Any:
    import matplotlib.pyplot as plt

    t = res.rounds
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.bar(t["round"], 100 * t["remote share"], color="tab:orange")
    a.set_xlabel("round (moves run during round 2)")
    a.set_ylabel("reads served from the other continent (%)")
    a.set_title("Remote reads")
    b.plot(t["round"], t["read p50 ms"], "o-", label="p50")
    b.plot(t["round"], t["read p99 ms"], "s--", label="p99")
    b.set_xlabel("round")
    b.set_ylabel("read latency (ms)")
    b.set_title("Read latency")
    b.legend()
    for ax in (a, b):
        ax.set_xticks(list(t["round"]))
    fig.tight_layout()
    return fig


def check_remote_share(res: PlacementResult, fall: float = 0.5) -> None:
    t = res.rounds
    before, after = float(t["remote share"].iloc[0]), float(t["remote share"].iloc[-1])
    checkpoint(
        f"the remote-read share falls by at least {fall:.0%} after migration",
        1 - after / max(before, 1e-9),
        at_least=fall,
        context=f"{before:.0%} before, {after:.0%} after, {res.moves} units moved",
    )
    p0, p1 = float(t["read p50 ms"].iloc[0]), float(t["read p50 ms"].iloc[-1])
    checkpoint(
        "p50 read latency falls with it (after / before)",
        p1 / p0,
        at_most=0.75,
        context=f"p50 {p0:.1f} ms before, {p1:.1f} ms after",
    )


def check_no_lost_writes(res: PlacementResult) -> None:
    w = res.writes
    checkpoint(
        "writes kept landing while units moved (acknowledged writes)",
        w.get("during moves", 0),
        at_least=1,
        context=f"{w['acknowledged']} acknowledged writes in all",
    )
    checkpoint(
        "0 acknowledged writes lost during the moves",
        w["lost"],
        at_most=0,
        context=f"{w['lost']} of {w['acknowledged']} acknowledged writes missing at their unit's home",
    )
    checkpoint(
        "0 writes duplicated during the moves",
        w["duplicated"],
        at_most=0,
        context=f"{w['duplicated']} extra copies among {w['acknowledged']} writes",
    )


def check_flapping(
    history: dict[int, list[str]], moves: int | None = None, label: str = "", claim_prefix: str = ""
) -> None:
    n = flaps(history)
    if moves is None:
        moves = sum(sum(1 for a, b in itertools.pairwise(h) if a != b) for h in history.values())
    checkpoint(
        f"{claim_prefix}0 flapping under a stable access pattern (units moved back)",
        n,
        at_most=0,
        context=f"{label}{n} moves back among {moves} moves of {len(history)} units",
    )


# -- exercise ---------------------------------------------------------------------------------------------------
def check_policy(choose_home: Policy, res: PlacementResult, windows: int = 8) -> None:
    """Run the learner's ``choose_home(counts, current) -> region`` on small cases, then offline on the real access
    log of ``res`` (cut into ``windows``): remote reads must fall by half or more and no unit may flap."""
    try:
        _check_policy(choose_home, res, windows)
    except NotImplementedError:
        print("Not attempted yet: write choose_home in the cell above, then run this cell again.")


def _check_policy(choose_home: Policy, res: PlacementResult, windows: int) -> None:
    from labkit.errors import CheckpointFailed

    cases = [
        ({"us": 3.0, "eu": 2.0}, "us", "us", "too few accesses to know: stay"),
        ({"us": 48.0, "eu": 52.0}, "us", "us", "read evenly from both regions: stay (hysteresis)"),
        ({"us": 52.0, "eu": 48.0}, "eu", "eu", "read evenly from both regions: stay (hysteresis)"),
        ({"us": 5.0, "eu": 95.0}, "us", "eu", "95% of the reads come from eu: move there"),
        ({"us": 90.0, "eu": 10.0}, "us", "us", "already where it is read: stay"),
    ]
    for counts, current, want, why in cases:
        got = choose_home(dict(counts), current)
        if got != want:
            raise CheckpointFailed(
                f"choose_home({counts}, current={current!r}) returned {got!r}, expected {want!r}: {why}"
            )
    history, before, after = replay(choose_home, res.log, windows=windows)
    checkpoint(
        "exercise: your policy halves the remote reads of the real access log",
        1 - after / max(before, 1e-9),
        at_least=0.5,
        context=f"remote share {before:.0%} with every unit in the US, {after:.0%} with yours",
    )
    check_flapping(history, label="replayed over the access log in windows: ", claim_prefix="exercise: ")
