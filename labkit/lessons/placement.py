"""Lesson 07 — move each user's data to where it is read (Akkio-style) on a real two-datacenter Cassandra.

Akkio (Facebook, OSDI 2018) splits data into small units ("microshards", here one per user), places each unit in
one region, counts accesses per unit and region, and moves a unit when another region dominates its recent
accesses. This module runs that on lesson 06's cluster and keyspaces (:mod:`labkit.datasets.geo_store`):

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

The parts live in their own modules (``placement_units``: the data, the directory and a move;
``placement_policy``: the policies, flaps and the offline replay; ``placement_exercise``: the learner's check).
This module keeps the experiment, its plot and claims, and re-exports the rest: ``placement.X`` works for all
of it.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from labkit import profile
from labkit.checkpoints import checkpoint
from labkit.datasets.geo_store import REGIONS, Geo
from labkit.errors import BadParameter
from labkit.lessons.placement_exercise import check_policy
from labkit.lessons.placement_policy import Hysteresis, Policy, check_flapping, flaps, most_accesses, replay
from labkit.lessons.placement_units import lookup, migrate, prepare, verify_units, write_row
from labkit.load import Uniform, Workload, run

__all__ = [
    "Hysteresis",
    "PlacementResult",
    "Policy",
    "check_flapping",
    "check_no_lost_writes",
    "check_policy",
    "check_remote_share",
    "defaults",
    "flaps",
    "lookup",
    "migrate",
    "most_accesses",
    "plot_rounds",
    "prepare",
    "replay",
    "run_placement",
    "verify_units",
    "write_row",
]


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
                geo.statement(region, f"SELECT id FROM geo_{home}.posts WHERE unit = ?", "QUORUM"), (unit,)
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


# -- plot and checkpoints ---------------------------------------------------------------------------------------
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
