"""Lesson 06's third experiment: the link between the continents is cut.

US clients run at each consistency level while the link is down: LOCAL_QUORUM keeps serving, QUORUM and
EACH_QUORUM fail. After healing, the rows written during the partition reach Europe (hinted handoff; when the
hints have not arrived after ``hint_wait`` s, a QUORUM read from the US repairs Europe's replica).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from labkit.checkpoints import checkpoint
from labkit.datasets.geo_store import CLS, GLOBAL_KS, Geo, user_op
from labkit.errors import BadParameter
from labkit.load import Uniform, Workload, run

__all__ = ["PartitionResult", "check_partition", "partition_run", "plot_partition"]


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
            fn = user_op(
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
    eu_read = geo.statement("eu", f"SELECT profile FROM {GLOBAL_KS}.users WHERE id = ?", "LOCAL_ONE")

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
        rq = geo.statement("us", f"SELECT profile FROM {GLOBAL_KS}.users WHERE id = ?", "QUORUM")
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
