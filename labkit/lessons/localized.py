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
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labkit import profile
from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter, CheckpointFailed
from labkit.load import Uniform, Workload, run

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CLS",
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
    "user_home",
]

CLS = ("LOCAL_QUORUM", "QUORUM", "EACH_QUORUM")
REGIONS = ("us", "eu")
GLOBAL_KS = "geo_global"


def nodes_spec() -> str:
    """Full: two nodes per DC (LOCAL_QUORUM needs both local replicas). CI and Binder (light, ~2 GB for
    everything, ~400 MB per light node): one node per DC, where LOCAL_QUORUM is one local replica and QUORUM is
    still both continents, so every claim keeps its meaning."""
    return "us:2,eu:2" if profile.current() == "full" else "us:1,eu:1"


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


def user_home(user_id: int) -> str:
    """Each user lives on one continent (even ids in the US, odd in Europe)."""
    return REGIONS[user_id % 2]


# -- the cluster and its regional clients -----------------------------------------------------------------------
@dataclass
class Geo:
    """A two-DC cluster with one driver session per region and the lesson's keyspaces."""

    cluster: Any
    sessions: dict[str, Any]
    rf: dict[str, int]
    _clusters: list[Any] = field(default_factory=list, repr=False)
    _prepared: dict[str, Any] = field(default_factory=dict, repr=False)

    def prepared(self, region: str, cql: str) -> Any:
        key = f"{region}|{cql}"
        if key not in self._prepared:
            self._prepared[key] = self.sessions[region].prepare(cql)
        return self._prepared[key]

    def link_bytes(self) -> int:
        return int(self.cluster.link_bytes()["total"])

    def close(self) -> None:
        for c in self._clusters:
            c.shutdown()
        self._clusters.clear()


def session_for(endpoint: Any, region: str, timeout: float = 10.0) -> tuple[Any, Any]:
    """A driver (cluster, session) whose coordinators are all in ``region``: an app server on that continent."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    prof = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=region)), request_timeout=timeout
    )
    cl = Cluster(
        endpoint.contact_points, port=endpoint.port, protocol_version=5, execution_profiles={EXEC_PROFILE_DEFAULT: prof}
    )
    return cl, cl.connect()


def connect(cluster: Any) -> Geo:
    """Sessions for "us" and "eu", and the keyspaces: geo_global (both continents), geo_us, geo_eu (one each)."""
    dcs = cluster.endpoint.extra["datacenters"]
    if set(dcs) != set(REGIONS):
        raise BadParameter(
            f"lesson 06 needs datacenters 'us' and 'eu', this cluster has {sorted(dcs)}: start it "
            f'with nodes="{nodes_spec()}"'
        )
    rf = {dc: min(2, len(addrs)) for dc, addrs in dcs.items()}
    geo = Geo(cluster=cluster, sessions={}, rf=rf)
    for region in REGIONS:
        cl, s = session_for(cluster.endpoint, region)
        geo._clusters.append(cl)
        geo.sessions[region] = s
    s = geo.sessions["us"]
    repl = {GLOBAL_KS: rf, "geo_us": {"us": rf["us"]}, "geo_eu": {"eu": rf["eu"]}}
    for ks, r in repl.items():
        spec = ", ".join(f"'{dc}': {n}" for dc, n in r.items())
        s.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', {spec}}}"
        )
        s.execute(f"CREATE TABLE IF NOT EXISTS {ks}.users (id int PRIMARY KEY, home text, profile text)")
    cluster.wait_for_schema_agreement()
    return geo


def _cl(name: str) -> int:
    from cassandra import ConsistencyLevel

    return getattr(ConsistencyLevel, name)


def _nth_user(i: int, rank: int) -> int:
    """Region i's users are the ids with id % 2 == i: rank r is user 2r + i."""
    return 2 * rank + i


def _op(
    geo: Geo,
    region: str,
    keyspace: Callable[[int], str],
    cl: str,
    value: str,
    acked: list[int] | None = None,
    user_of: Callable[[int], int] = lambda r: r,
) -> Callable[..., None]:
    """A labkit.load operation: read or write one user's row from ``region`` at consistency ``cl``."""
    level = _cl(cl)
    session = geo.sessions[region]

    def op(ctx: Any, o: Any) -> None:
        uid = user_of(o.rank)
        ks = keyspace(uid)
        if o.kind == "write":
            b = geo.prepared(region, f"INSERT INTO {ks}.users (id, home, profile) VALUES (?, ?, ?)").bind(
                (uid, user_home(uid), value)
            )
        else:
            b = geo.prepared(region, f"SELECT profile FROM {ks}.users WHERE id = ?").bind((uid,))
        b.consistency_level = level
        session.execute(b)
        if acked is not None and o.kind == "write":
            acked.append(uid)

    return op


def _with_cl(geo: Geo, region: str, cql: str, cl: str) -> Any:
    """A statement prepared in ``region`` with its own consistency level (bind or execute it with values)."""
    key = f"{region}|{cl}|{cql}"
    if key not in geo._prepared:
        st = geo.sessions[region].prepare(cql)
        st.consistency_level = _cl(cl)
        geo._prepared[key] = st
    return geo._prepared[key]


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
            fn = _op(geo, region, lambda uid: GLOBAL_KS, cl, "x" * 100)
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
            fn = _op(geo, region, ks, "LOCAL_QUORUM", value, user_of=functools.partial(_nth_user, i))
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
    fn = _op(geo, "eu", lambda uid: f"geo_{user_home(uid)}", "ONE", value, user_of=lambda r: 2 * r)
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


# -- experiment 3: a partition between the datacenters ---------------------------------------------------------------
@dataclass
class PartitionResult:
    """Success per consistency level while the link was cut, and how the other continent caught up after."""

    table: Any
    written: int  # rows acknowledged at LOCAL_QUORUM in the US during the partition
    visible_at_heal: int  # of those, readable at LOCAL_ONE in Europe right after healing
    converged: int  # readable in Europe at the end
    converged_by: str  # "hinted handoff" or "read repair"
    seconds_to_converge: float
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (s after heal, rows visible in eu)

    def success(self, cl: str) -> float:
        row = self.table[self.table["consistency"] == cl].iloc[0]
        return float(row["success"])


def partition_run(
    geo: Geo,
    duration: float = 3.0,
    clients: int = 4,
    users: int = 200,
    seed: int = 1,
    cut: bool = True,
    hint_wait: float = 20.0,
    levels: tuple[str, ...] = CLS,
) -> PartitionResult:
    """Cut the inter-DC link, run US clients at each consistency level for ``duration`` s, heal, and watch the
    rows written during the partition appear in Europe (hints; after ``hint_wait`` s, a read-repair pass)."""
    import pandas as pd

    if not 0.5 <= duration <= 120:
        raise BadParameter(f"duration={duration}: use 0.5-120 s per consistency level")
    base = 1_000_000 + seed * 10_000  # fresh rows: "visible in eu" cannot come from an older run
    token = f"partition-{time.time_ns()}"
    acked: list[int] = []
    rows = []
    if cut:
        geo.cluster.partition()
    try:
        for cl in levels:
            fn = _op(
                geo,
                "us",
                lambda uid: GLOBAL_KS,
                cl,
                token,
                acked if cl == "LOCAL_QUORUM" else None,
                user_of=lambda r: base + r,
            )
            res = run(
                fn,
                Workload(
                    keys=Uniform(users), mix={"read": 0.5, "write": 0.5}, clients=clients, duration=duration, seed=seed
                ),
                name=f"partition {cl}",
                op_timeout=15,
            )
            total = res.ops + res.error_count
            rows.append(
                {
                    "consistency": cl,
                    "attempts": total,
                    "succeeded": res.ops,
                    "failed": res.error_count,
                    "success": res.ops / total if total else float("nan"),
                    "errors": ", ".join(sorted(res.errors)) or "-",
                }
            )
    finally:
        if cut:
            geo.cluster.heal()
    written = sorted(set(acked))
    t0 = time.monotonic()
    eu_read = _with_cl(geo, "eu", f"SELECT profile FROM {GLOBAL_KS}.users WHERE id = ?", "LOCAL_ONE")

    def visible() -> int:
        from cassandra.concurrent import execute_concurrent_with_args

        rs = execute_concurrent_with_args(
            geo.sessions["eu"], eu_read, [(u,) for u in written], concurrency=32, raise_on_first_error=False
        )
        return sum(1 for ok, r in rs if ok and (row := r.one()) is not None and row[0] == token)

    timeline = [(0.0, visible())]
    by = "hinted handoff"
    while timeline[-1][1] < len(written) and time.monotonic() - t0 < hint_wait:
        time.sleep(1.0)
        timeline.append((time.monotonic() - t0, visible()))
    if timeline[-1][1] < len(written):  # a QUORUM read from the US sees the mismatch and repairs Europe's replica
        from cassandra.concurrent import execute_concurrent_with_args

        by = "read repair"
        rq = _with_cl(geo, "us", f"SELECT profile FROM {GLOBAL_KS}.users WHERE id = ?", "QUORUM")
        execute_concurrent_with_args(
            geo.sessions["us"], rq, [(u,) for u in written], concurrency=16, raise_on_first_error=False
        )
        timeline.append((time.monotonic() - t0, visible()))
    return PartitionResult(
        table=pd.DataFrame(rows),
        written=len(written),
        visible_at_heal=timeline[0][1],
        converged=timeline[-1][1],
        converged_by=by,
        seconds_to_converge=timeline[-1][0],
        timeline=timeline,
    )


def plot_partition(res: PartitionResult) -> Any:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    t = res.table
    a.bar(t["consistency"], 100 * t["success"], color=["tab:green" if s > 0.5 else "tab:red" for s in t["success"]])
    a.set_ylabel("operations that succeeded (%)")
    a.set_title("US clients while the link is cut")
    a.set_ylim(0, 105)
    xs, ys = zip(*res.timeline)
    b.step(xs, [100 * y / max(1, res.written) for y in ys], where="post", marker="o")
    b.set_xlabel("seconds after healing")
    b.set_ylabel("partition-time writes readable in eu (%)")
    b.set_title(f"Europe catches up ({res.converged_by})")
    b.set_ylim(0, 105)
    fig.tight_layout()
    return fig


def check_partition(res: PartitionResult, local_at_least: float = 0.99) -> None:
    checkpoint(
        "LOCAL_QUORUM keeps serving during the partition",
        res.success("LOCAL_QUORUM"),
        at_least=local_at_least,
        context=f"success share, {res.written} rows written in the US",
    )
    for cl in ("QUORUM", "EACH_QUORUM"):
        if cl in set(res.table["consistency"]):
            checkpoint(
                f"{cl} fails during the partition",
                res.success(cl),
                at_most=0.01,
                context="success share while the inter-DC link was cut",
            )
    checkpoint(
        "after healing, every row written during the partition is readable in Europe",
        res.converged / max(1, res.written),
        at_least=1.0,
        context=f"{res.converged} of {res.written} rows via {res.converged_by}",
    )


# -- exercise: save a profile on its home continent ------------------------------------------------------------------
def check_save_profile(
    save_profile: Callable[[dict[str, Any], int, str, str], None], geo: Geo, users: int = 60
) -> None:
    """Run the learner's ``save_profile(sessions, user_id, home, profile)`` for users of both continents; check
    every row is in its home continent's keyspace only, and that the link carried almost nothing."""
    try:
        _check_save_profile(save_profile, geo, users)
    except NotImplementedError:
        print("Not attempted yet: write save_profile in the cell above, then run this cell again.")


def _check_save_profile(save_profile: Callable[..., None], geo: Geo, users: int) -> None:
    ids = list(range(5_000_000, 5_000_000 + users))
    token = f"ex-{time.time_ns()}"
    before = geo.link_bytes()
    for uid in ids:
        save_profile(geo.sessions, uid, user_home(uid), token + "x" * 1000)
    crossed = geo.link_bytes() - before
    for uid in ids:
        home = user_home(uid)
        away = "eu" if home == "us" else "us"
        got = (
            geo.sessions[home]
            .execute(_with_cl(geo, home, f"SELECT profile FROM geo_{home}.users WHERE id = ?", "LOCAL_ONE"), (uid,))
            .one()
        )
        if got is None or not got[0].startswith(token):
            raise CheckpointFailed(
                f"user {uid} (home {home}) is not in geo_{home}.users after save_profile: write "
                f"it with sessions['{home}'] into the keyspace geo_{home}"
            )
        other = (
            geo.sessions[away]
            .execute(_with_cl(geo, away, f"SELECT profile FROM geo_{away}.users WHERE id = ?", "LOCAL_ONE"), (uid,))
            .one()
        )
        if other is not None and other[0].startswith(token):
            raise CheckpointFailed(
                f"user {uid} (home {home}) was also written to geo_{away}: a profile lives on its home continent only"
            )
    checkpoint(
        "exercise: profiles stay on their home continent (KB across the link per 1000 saves)",
        crossed / users * 1000 / 1024,
        at_most=100.0,
        context="a global keyspace would ship every ~1 KB profile across (~1000 KB per 1000 saves)",
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
