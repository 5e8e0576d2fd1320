"""Lesson 06 — per-continent data clusters on a real two-datacenter Cassandra.

The cluster is labkit's local one: nodes in datacenters "us" and "eu", every inter-DC message crossing the
userspace latency proxy (``inter_dc_delay_ms`` one way, so a cross-DC round trip costs twice that), which also
counts the bytes crossing the link and can cut it (a partition). Clients per region are driver sessions whose
coordinators are in that region only (DCAwareRoundRobinPolicy(local_dc=...), token aware), the way an app
server on each continent talks to its nearest Cassandra nodes.

Three experiments, all timed through labkit.load:

* :func:`measure_consistency` — reads and writes from each region at LOCAL_QUORUM, QUORUM and EACH_QUORUM on a
  keyspace replicated on both continents: latency per consistency level against the injected delay.
* :func:`compare_placement` — a home-local workload (each region reads and writes its own users) on one global
  keyspace vs per-continent keyspaces (``{us: R}`` and ``{eu: R}``): bytes across the link per 1000 operations.
* :func:`partition_run` — the link is cut: LOCAL_QUORUM keeps serving, QUORUM and EACH_QUORUM fail; after
  healing, writes made during the partition reach the other continent (hinted handoff, else read repair).

The cluster, its regional sessions and the keyspaces are the store lessons 06 and 07 share
(:mod:`labkit.datasets.geo_store`). The partition lives in ``localized_partition``, the learner's check in
``localized_exercise``; this module keeps the first two experiments and re-exports the rest: ``localized.X``
works for all of it.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labkit import profile
from labkit.checkpoints import checkpoint
from labkit.datasets.geo_store import CLS, GLOBAL_KS, REGIONS, Geo, connect, nodes_spec, session_for, user_home, user_op
from labkit.errors import BadParameter
from labkit.lessons.localized_exercise import check_save_profile
from labkit.lessons.localized_partition import PartitionResult, check_partition, partition_run, plot_partition
from labkit.load import Uniform, Workload, run

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CLS",
    "GLOBAL_KS",
    "REGIONS",
    "Geo",
    "PartitionResult",
    "check_bytes_across_link",
    "check_local_quorum_latency",
    "check_partition",
    "check_save_profile",
    "compare_placement",
    "connect",
    "defaults",
    "measure_consistency",
    "nodes_spec",
    "partition_run",
    "plot_consistency",
    "plot_partition",
    "plot_placement",
    "session_for",
    "user_home",
]


def defaults() -> dict[str, Any]:
    """The notebook's knobs for the current profile."""
    # one client per cell for latency (no request queues behind our own), a few for the traffic experiments
    return {
        "delay_ms": 40,
        "clients": 1,
        "load_clients": 3,
        "ops": int(profile.pick(400, 80)),
        "value_size": 1000,
        "users": int(profile.pick(2000, 200)),
        "partition_s": profile.pick(8.0, 3.0),
        "seed": 1,
    }


def _nth_user(i: int, rank: int) -> int:
    """Region i's users are the ids with id % 2 == i: rank r is user 2r + i."""
    return 2 * rank + i


# -- experiment 1: consistency levels against the inter-DC delay --------------------------------------------------
def measure_consistency(
    geo: Geo,
    delay_ms: float = 40,
    clients: int = 2,
    ops: int = 80,
    users: int = 200,
    seed: int = 1,
    levels: tuple[str, ...] = CLS,
    passes: int = 2,
) -> pd.DataFrame:
    """Per region and consistency level: p50/p99 of a 50/50 read/write mix on the global keyspace.

    Why ``passes``: the cells run interleaved in that many slices (LOCAL_QUORUM, QUORUM, ... then again), so a
    burst of load from elsewhere on the machine falls on every level alike instead of on one of them."""
    import pandas as pd

    if not 0 <= delay_ms <= 1000:
        raise BadParameter(f"delay_ms={delay_ms}: use 0-1000 ms one way")
    if not 1 <= passes <= ops:
        raise BadParameter(f"passes={passes}: use 1..ops")
    geo.cluster.set_inter_dc_delay(delay_ms)
    results: dict[tuple[str, str], Any] = {}
    for i in range(passes):
        for region, cl in itertools.product(REGIONS, levels):
            fn = user_op(geo, region, lambda uid: GLOBAL_KS, cl, "x" * 100)
            res = run(
                fn,
                Workload(
                    keys=Uniform(users),
                    mix={"read": 0.5, "write": 0.5},
                    clients=clients,
                    ops=max(1, ops // passes),
                    duration=None,
                    seed=seed + i,
                ),
                name=f"{region} {cl}",
                op_timeout=15,
            )
            key = (region, cl)
            results[key] = results[key].merge(res) if key in results else res
    rows = []
    for (region, cl), res in results.items():
        p = res.percentiles()
        rows.append(
            {
                "region": region,
                "consistency": cl,
                "delay_ms": delay_ms,
                "ops": res.ops,
                "errors": res.error_count,
                "p50_ms": p["p50"],
                "p99_ms": p["p99"],
            }
        )
    return pd.DataFrame(rows)


def plot_consistency(table: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    piv = table.pivot(index="consistency", columns="region", values="p50_ms").reindex(
        [c for c in CLS if c in set(table["consistency"])]
    )
    piv.plot.bar(ax=ax, rot=0)
    d = float(table["delay_ms"].iloc[0])
    ax.axhline(2 * d, color="grey", ls="--", lw=1, label=f"one cross-DC round trip (2 × {d:g} ms)")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_xlabel("consistency level")
    ax.set_title("Read/write latency per consistency level, client in each region")
    ax.legend()
    fig.tight_layout()
    return fig


def check_local_quorum_latency(table: pd.DataFrame, fraction: float = 0.25) -> None:
    """LOCAL_QUORUM's p50 is at most ``fraction`` of cross-DC QUORUM's, in each region."""
    d = float(table["delay_ms"].iloc[0])
    worst = 0.0
    for region in REGIONS:
        t = table[table["region"] == region].set_index("consistency")
        if {"LOCAL_QUORUM", "QUORUM"} - set(t.index):
            raise BadParameter("the table needs LOCAL_QUORUM and QUORUM rows: run measure_consistency first")
        p50 = t["p50_ms"]
        worst = max(worst, float(p50["LOCAL_QUORUM"]) / float(p50["QUORUM"]))
    q = float(table[table["consistency"] == "QUORUM"]["p50_ms"].min())
    checkpoint(
        "QUORUM pays at least one cross-DC round trip",
        q,
        at_least=2 * d * 0.95,
        context=f"inter-DC delay {d:g} ms one way",
    )
    checkpoint(
        f"LOCAL_QUORUM p50 is at most {fraction:.0%} of cross-DC QUORUM's in each region",
        worst,
        at_most=fraction,
        context=f"worst region's ratio at {d:g} ms one way",
    )


# -- experiment 2: one global cluster vs per-continent placement ----------------------------------------------------
def compare_placement(
    geo: Geo,
    clients: int = 4,
    ops: int = 80,
    users: int = 200,
    value_size: int = 1000,
    seed: int = 1,
    keyspaces: dict[str, Callable[[int], str]] | None = None,
) -> pd.DataFrame:
    """A home-local workload (each region's clients read and write only their own users, 50/50, LOCAL_QUORUM)
    on each placement; bytes across the inter-DC link per 1000 operations, latency. One more row reads a
    user from the other continent under per-continent placement (a traveller): that read must cross."""
    import pandas as pd

    if not 10 <= value_size <= 60_000:
        raise BadParameter(f"value_size={value_size}: use 10-60000 bytes per profile")
    keyspaces = keyspaces or {"global": lambda uid: GLOBAL_KS, "per-continent": lambda uid: f"geo_{user_home(uid)}"}
    value = "p" * value_size
    rows = []
    for name, ks in keyspaces.items():
        before, n_ops, hists = geo.link_bytes(), 0, []
        for i, region in enumerate(REGIONS):  # region i serves users with id % 2 == i
            fn = user_op(geo, region, ks, "LOCAL_QUORUM", value, user_of=functools.partial(_nth_user, i))
            res = run(
                fn,
                Workload(
                    keys=Uniform(users // 2),
                    mix={"read": 0.5, "write": 0.5},
                    clients=clients,
                    ops=ops,
                    duration=None,
                    seed=seed + i,
                ),
                name=f"{name} {region}",
                op_timeout=15,
            )
            n_ops += res.ops
            hists.append(res)
        crossed = geo.link_bytes() - before
        merged = hists[0].merge(hists[1]).percentiles()
        rows.append(
            {
                "placement": name,
                "reads from": "home",
                "ops": n_ops,
                "KB across link per 1000 ops": crossed / max(1, n_ops) * 1000 / 1024,
                "p50_ms": merged["p50"],
                "p99_ms": merged["p99"],
            }
        )
    # the traveller: eu clients read US users stored only in the US (ONE: the coordinator is in eu)
    before = geo.link_bytes()
    fn = user_op(geo, "eu", lambda uid: f"geo_{user_home(uid)}", "ONE", value, user_of=lambda r: 2 * r)
    res = run(
        fn,
        Workload(
            keys=Uniform(users // 2),
            mix={"read": 1.0},
            clients=clients,
            ops=max(10, ops // 2),
            duration=None,
            seed=seed,
        ),
        name="traveller",
        op_timeout=15,
    )
    p = res.percentiles()
    rows.append(
        {
            "placement": "per-continent",
            "reads from": "other continent",
            "ops": res.ops,
            "KB across link per 1000 ops": (geo.link_bytes() - before) / max(1, res.ops) * 1000 / 1024,
            "p50_ms": p["p50"],
            "p99_ms": p["p99"],
        }
    )
    return pd.DataFrame(rows)


def check_bytes_across_link(table: pd.DataFrame, factor: float = 5.0) -> None:
    """Per-continent placement moves at least ``factor`` times fewer bytes across the link (home-local work)."""
    t = table[table["reads from"] == "home"].set_index("placement")["KB across link per 1000 ops"]
    ratio = float(t["global"]) / max(float(t["per-continent"]), 1e-9)
    checkpoint(
        f"per-continent placement moves at least {factor:g}x fewer bytes across the link than global",
        ratio,
        at_least=factor,
        context=f"global {t['global']:.1f} KB vs per-continent {t['per-continent']:.1f} KB per 1000 ops",
    )


def plot_placement(table: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    labels = [f"{p}\n(reads from {r})" for p, r in zip(table["placement"], table["reads from"])]
    a.bar(labels, table["KB across link per 1000 ops"], color=["tab:red", "tab:green", "tab:orange"][: len(table)])
    a.set_yscale("log")
    a.set_ylabel("KB across the inter-DC link\nper 1000 operations (log)")
    a.set_title("Traffic on the ocean link")
    b.bar(labels, table["p50_ms"], color=["tab:red", "tab:green", "tab:orange"][: len(table)])
    b.set_ylabel("p50 latency (ms)")
    b.set_title("Latency seen by the client")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig
