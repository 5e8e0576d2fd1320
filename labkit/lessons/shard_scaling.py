"""Lesson 03: throughput of the same logical layout on 1, 2, 3 and 4 physical Postgres servers.

On one machine every server shares the same cores, so adding servers would add nothing but
contention. To measure what a server *adds*, each one gets an honest, equal capacity: its postmaster
(and so every backend it forks) goes into its own cgroup with a CPU quota (labkit.cgroups.CpuLimit),
e.g. a quarter of a core. With k servers the cluster has k quarters; the load generator keeps the
rest of the machine. Where cgroups cannot be written (Binder, macOS, most containers) the sweep says
so and the scaling claim is skipped with that reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit import cgroups
from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter, ResourceLimitUnavailable
from labkit.lessons.shard_pool import ConnectionPool
from labkit.lessons.shard_router import USERS_PER_SHARD, Router, feed_sql, insert_sql
from labkit.load.runner import run
from labkit.load.workload import Uniform, Workload

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ScalingResult", "check_scaling", "cpu_caps", "plot", "scaling_sweep", "table", "view"]


@dataclass
class ScalingResult:
    """One row per server count: throughput, latency, errors, how long the caps throttled."""

    rows: list[dict[str, Any]]
    cpus_per_server: float | None
    capped: bool
    why_not_capped: str = ""
    n_shards: int = 0
    results: list[Any] = field(default_factory=list)

    def throughput(self, servers: int) -> float:
        for r in self.rows:
            if r["servers"] == servers:
                return float(r["throughput (ops/s)"])
        raise BadParameter(f"no run with {servers} servers in this sweep (it has {[r['servers'] for r in self.rows]})")

    def summary(self) -> str:
        return ", ".join(f"{r['servers']} servers: {r['throughput (ops/s)']:.0f} ops/s" for r in self.rows)


def _postmaster_pids(st: Any, count: int) -> list[int]:
    pids = []
    for i in range(count):
        svc = st.service("postgres" if i == 0 else f"postgres-{i + 1}")
        refs = svc.pids() if hasattr(svc, "pids") else []
        if not refs:
            raise ResourceLimitUnavailable(
                f"Postgres '{svc.name}' runs as a {svc.provider} service whose process "
                "labkit cannot see: CPU caps need local servers"
            )
        pids.append(int(refs[0]["pid"]))
    return pids


def _weight_file(group: Path) -> Path:
    return group / ("cpu.shares" if (group / "cpu.shares").exists() else "cpu.weight")


@contextlib.contextmanager
def _high_weight(groups: list[Path]) -> Iterator[None]:
    """Give these cgroups (and their common parent) the highest CPU weight while the block runs.

    Why: a cgroup competes with its siblings by weight, and a new group weighs as much as ONE ordinary
    process. On a busy machine twenty runnable processes in the root group would leave all the capped
    servers together one twentieth of the CPU, so the caps would never be reached and the sweep would
    measure the neighbours. The quotas still bound what each group may take, so a high weight cannot
    let the lesson take more than its stated caps."""
    saved: list[tuple[Path, str]] = []
    try:
        for g in [groups[0].parent, *groups] if groups else []:
            f = _weight_file(g)
            saved.append((f, f.read_text().strip()))
            f.write_text("262144" if f.name == "cpu.shares" else "10000")
        yield
    finally:
        for f, value in reversed(saved):
            with contextlib.suppress(OSError):
                f.write_text(value)


@contextlib.contextmanager
def cpu_caps(st: Any, count: int, cpus: float, *, client_cpus: float | None = None) -> Iterator[list[cgroups.CpuLimit]]:
    """Put each of the first ``count`` Postgres servers (postmaster and its children) in its own
    cgroup of ``cpus`` cores, and this process (the load generator) in one of ``client_cpus`` cores
    (default: what the servers leave of the machine, at least half a core); lifted on exit."""
    ok, why = cgroups.available("cpu")
    if not ok:
        raise ResourceLimitUnavailable(f"cannot cap CPU per server here: {why}")
    pids = _postmaster_pids(st, count)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    client_cpus = client_cpus or max(0.5, cores - count * cpus)
    caps: list[cgroups.CpuLimit] = []
    try:
        for i, pid in enumerate(pids):
            cap = cgroups.CpuLimit(f"lesson03-pg{i + 1}", cpus)
            caps.append(cap)
            cap.add_tree(pid)
        client = cgroups.CpuLimit("lesson03-client", client_cpus)
        caps.append(client)
        client.add(os.getpid())
        with _high_weight([c.path for c in caps]):
            yield caps[:-1]
    finally:
        for cap in caps:
            cap.close()


def _op(router: Router, read_ratio: float) -> Callable[..., Any]:
    n = router.n_shards
    smap = list(router.map)
    inserts = [insert_sql(s) for s in range(n)]
    feeds = [feed_sql(s) for s in range(n)]

    async def photo_op(ctx: Any, op: Any) -> None:
        user = op.rank
        shard = user % n
        conn = ctx.conn[smap[shard]]
        if op.kind == "write":
            await conn.query(inserts[shard], (user, op.seq))
        else:
            await conn.query(feeds[shard], (user,))

    return photo_op


def scaling_sweep(
    st: Any,
    router: Router,
    pool: ConnectionPool,
    *,
    servers: int = 4,
    clients: int = 32,
    cpus_per_server: float = 0.25,
    duration: float = 3.0,
    read_ratio: float = 0.7,
    seed: int = 0,
    rounds: int = 2,
    progress: Callable[..., Any] | None = None,
    stop: Any = None,
) -> ScalingResult:
    """Run the same photo workload (``read_ratio`` feed reads, the rest photo inserts, users uniform over
    every shard) with the shards spread over 1..``servers`` servers, each server capped at
    ``cpus_per_server`` cores; ``rounds=2`` measures each count twice (going up, then down) and
    keeps the better run: on a shared machine other programs only ever slow a run down, so the faster of
    two is the less disturbed estimate (as in lesson 02). The router's map is restored afterwards."""
    if rounds not in (1, 2):
        raise BadParameter(f"rounds={rounds}: 1 (up only) or 2 (up and back down)")
    if not 1 <= servers <= len(router.dsns):
        raise BadParameter(f"servers={servers}: the router has {len(router.dsns)} servers; use 1..{len(router.dsns)}")
    if not 0 <= read_ratio <= 1:
        raise BadParameter(f"read_ratio={read_ratio}: a fraction in [0, 1]")
    saved = list(router.map)
    users = router.n_shards * USERS_PER_SHARD  # the seeded users: each has PHOTOS_PER_USER photos to read
    rows, results = [], []
    mappings = [router.spread(k) for k in range(1, servers + 1)]
    router.ensure(mappings)  # DDL and warm-up before the caps slow them down
    pool.reserve(clients)
    pool.warm(router, mappings, clients)
    try:
        with contextlib.ExitStack() as stack:
            capped, why = True, ""
            caps: list[cgroups.CpuLimit] = []
            try:
                caps = stack.enter_context(cpu_caps(st, servers, cpus_per_server))
            except ResourceLimitUnavailable as exc:
                capped, why = False, str(exc)
            # up and back down (1..k..1): a slow drift of the machine's other load hits every server count
            # alike, and each count's throughput is the better of its two runs
            runs: dict[int, list[tuple[Any, list[float]]]] = {}
            for k in [*range(1, servers + 1), *range(servers, 0, -1)][: 2 * servers if rounds == 2 else servers]:
                router.assign(router.spread(k))
                before = [c.throttled_seconds() for c in caps]
                wl = Workload(
                    keys=Uniform(users),
                    mix={"read": read_ratio, "write": 1 - read_ratio},
                    clients=clients,
                    duration=duration,
                    seed=seed + k + 10 * len(runs.get(k, [])),
                    value_size=0,
                )
                res = run(
                    _op(router, read_ratio),
                    wl,
                    driver=pool.driver(),
                    name=f"{k} servers",
                    progress=progress,
                    stop=stop,
                    use_uvloop=True,
                )
                runs.setdefault(k, []).append((res, [c.throttled_seconds() - b for c, b in zip(caps, before)][:k]))
                results.append(res)
            for k in sorted(runs):
                tput = max(r.throughput for r, _ in runs[k])
                pct = runs[k][0][0].percentiles()
                throttled = sum(sum(t) / k for _, t in runs[k]) / len(runs[k])
                rows.append(
                    {
                        "servers": k,
                        "throughput (ops/s)": tput,
                        "per server (ops/s)": tput / k,
                        "p50 (ms)": pct["p50"],
                        "p99 (ms)": pct["p99"],
                        "errors": sum(r.error_count for r, _ in runs[k]),
                        "CPU cap (cores)": k * cpus_per_server if capped else float("nan"),
                        "throttled (s per server)": throttled if capped else float("nan"),
                    }
                )
    finally:
        router.assign(saved)
    return ScalingResult(rows, cpus_per_server if capped else None, capped, why, router.n_shards, results)


def table(res: ScalingResult) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(res.rows).set_index("servers")
    df["speed-up vs 1"] = df["throughput (ops/s)"] / df["throughput (ops/s)"].iloc[0]
    return df.round(
        {
            "throughput (ops/s)": 0,
            "per server (ops/s)": 0,
            "p50 (ms)": 2,
            "p99 (ms)": 2,
            "CPU cap (cores)": 2,
            "throttled (s per server)": 2,
            "speed-up vs 1": 2,
        }
    )


def plot(res: ScalingResult) -> Any:
    """Measured throughput vs servers, with linear scaling from one server and the CPU cap."""
    import matplotlib.pyplot as plt

    k = [r["servers"] for r in res.rows]
    tput = [r["throughput (ops/s)"] for r in res.rows]
    _, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    ax.plot(k, tput, "o-", label="measured")
    ax.plot(k, [tput[0] * x for x in k], ":", color="grey", label="linear (k × one server)")
    ax.set_xlabel("physical Postgres servers (same logical shards)")
    ax.set_ylabel("throughput (operations/s)")
    ax.set_xticks(k)
    ax.set_ylim(bottom=0)
    if res.capped:
        ax2 = ax.twinx()
        ax2.bar(
            k,
            [x * res.cpus_per_server for x in k],
            width=0.35,
            alpha=0.15,
            color="tab:red",
            label=f"CPU cap: {res.cpus_per_server:g} core per server",
        )
        ax2.set_ylabel("total CPU cap of the servers (cores)")
        ax2.set_ylim(0, max(k) * res.cpus_per_server * 1.3)
        ax2.legend(loc="lower right")
        title = f"{res.n_shards} logical shards, each server capped at {res.cpus_per_server:g} core"
    else:
        title = f"{res.n_shards} logical shards, NO CPU cap ({res.why_not_capped[:60]})"
    ax.legend(loc="upper left")
    ax.set_title(title, fontsize=10)
    return ax


def view(res: ScalingResult) -> list[Any]:
    """The panel's view of a sweep: its table and its plot."""
    return [table(res), plot(res)]


def check_scaling(res: ScalingResult, *, four: float = 2.5, two: float = 1.6) -> None:
    """The scaling checkpoint: with equal, capped servers, 4 give >= 2.5x and 2 give >= 1.6x of one."""
    if not res.capped:
        print(f"SKIP  scaling claim: {res.why_not_capped}")
        return
    base = res.throughput(1)
    ctx = f"{res.n_shards} shards, {res.cpus_per_server:g} core per server; {res.summary()}"
    for r in res.rows:
        checkpoint(f"no errors with {r['servers']} servers", r["errors"], at_most=0, context=ctx)
    checkpoint(
        "2 capped servers give at least 1.6x the throughput of 1", res.throughput(2) / base, at_least=two, context=ctx
    )
    if any(r["servers"] == 4 for r in res.rows):
        checkpoint(
            "4 capped servers give at least 2.5x the throughput of 1",
            res.throughput(4) / base,
            at_least=four,
            context=ctx,
        )
