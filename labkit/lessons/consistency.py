"""Lesson 05 — consistency levels on a real 3-node Cassandra cluster (RF=3), checked with a history checker.

Every operation of every client goes into a :class:`labkit.history.History` (invoke and complete times,
value, outcome); :func:`labkit.history.check` then finds stale reads and lost writes in it. The faults are
real: the third node's JVM is paused (SIGSTOP), killed (SIGKILL) and restarted.

How a replica comes to lag, reliably: while node C is paused, writes are acknowledged by A and B (at ONE or
QUORUM) and the copies sent to C wait in its socket buffer. Cassandra drops a message that arrives after its
timeout (``write_request_timeout``, 2 s here), so once C has been paused that long after the last write it
has *missed* them; the coordinators keep hints and replay them later (tens of seconds here). Clients near C
then read through it. At ONE, C answers from its own copy: stale. At QUORUM, C must also ask A or B, and the
newest timestamp wins: fresh. This is the R + W > N rule (Dynamo, 2007) measured.

Scenario runs (:func:`lagging_replica`, :func:`node_down`, :func:`lwt_latency`) use ``labkit.load`` for the
concurrent clients; each client of a scenario owns one (write CL, read CL) pair and its own keys, so a client
stuck in an ALL write that times out slows no other pair.

The parts live in their own modules (``consistency_cluster``: the cluster, its coordinators and faults;
``consistency_runs``: the recorded lagging-replica and node-down scenarios; ``consistency_checks``: tables,
plots, checkpoints and the exercise's self-check). This module keeps the lightweight transactions and
re-exports the rest: ``consistency.X`` works for all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labkit.errors import BadParameter
from labkit.lessons.consistency_checks import (
    check_lwt_slower,
    check_no_lost_writes,
    check_node_down,
    check_one_reads_stale,
    check_quorum_never_stale,
    check_stale_rule,
    plot_rwn,
    rwn_table,
)
from labkit.lessons.consistency_cluster import DDL_TIMEOUT_S, KEYSPACE, LEVELS, PAIRS, RESTART_TIMEOUT_S, Lab, replicas
from labkit.lessons.consistency_runs import (
    EXPIRE_S,
    LAG_WRITE_CAP_S,
    PHASE_CAP_S,
    LaggingRun,
    NodeDownRun,
    final_reads,
    lagging_replica,
    node_down,
    run_id,
)
from labkit.load import Uniform, Workload, run

__all__ = [
    "DDL_TIMEOUT_S",
    "EXPIRE_S",
    "KEYSPACE",
    "LAG_WRITE_CAP_S",
    "LEVELS",
    "PAIRS",
    "PHASE_CAP_S",
    "RESTART_TIMEOUT_S",
    "Lab",
    "LaggingRun",
    "LwtRun",
    "NodeDownRun",
    "check_lwt_slower",
    "check_no_lost_writes",
    "check_node_down",
    "check_one_reads_stale",
    "check_quorum_never_stale",
    "check_stale_rule",
    "defaults",
    "final_reads",
    "lagging_replica",
    "lwt_latency",
    "node_down",
    "plot_rwn",
    "replicas",
    "rwn_table",
]


def defaults() -> dict[str, Any]:
    """Scenario sizes for the current profile (LABKIT_PROFILE): every claim is measured in each."""
    from labkit import profile

    return {
        "clients_per_pair": int(profile.pick(3, 2)),
        "keys_per_pair": int(profile.pick(20, 10)),
        "ops_per_client": int(profile.pick(40, 20)),
        "lwt_clients": 2,
        "lwt_ops": int(profile.pick(400, 150)),
    }


# ------------------------------------------------------------------------------------- lightweight transactions


@dataclass
class LwtRun:
    """Latencies of LWTs (Paxos) and plain QUORUM writes, interleaved in the same run (same machine load).
    ``not_applied``: compare-and-sets refused although the client knew the current value (0 without contention;
    a CAS after a timed-out one is not counted: the timed-out one may have applied)."""

    result: Any
    not_applied: int

    def p50_ms(self, kind: str) -> float:
        return self.result.percentiles(kind)["p50"]

    @property
    def ratio(self) -> float:
        lwt = (self.p50_ms("insert if not exists") + self.p50_ms("update if v =")) / 2
        return lwt / self.p50_ms("plain write")

    def table(self) -> Any:
        import pandas as pd

        rows = []
        for kind in ("plain write", "insert if not exists", "update if v ="):
            p = self.result.percentiles(kind)
            rows.append(
                {
                    "operation": kind,
                    "ops": int(self.result.hists[kind].get_total_count()),
                    "p50 (ms)": round(p["p50"], 2),
                    "p99 (ms)": round(p["p99"], 1),
                    "p50 / plain p50": round(p["p50"] / self.p50_ms("plain write"), 2),
                }
            )
        return pd.DataFrame(rows).set_index("operation")


def lwt_latency(lab: Lab, *, clients: int = 2, ops: int = 150, seed: int = 0, lwt_kind: str = "lwt") -> LwtRun:
    """Plain QUORUM inserts vs ``INSERT ... IF NOT EXISTS`` vs ``UPDATE ... IF v = <current>`` (compare-and-set on
    the client's own key, so no two clients contend). ``lwt_kind="plain"`` runs plain writes under the LWT
    names (the control that shows the checkpoint failing)."""
    if clients < 1 or ops < 3 * clients:
        raise BadParameter(f"need clients >= 1 and ops >= 3 x clients (got clients={clients}, ops={ops})")
    keys = run_id()
    current = {i: 0 for i in range(clients)}
    known = {i: True for i in range(clients)}  # False after a timeout: the CAS may or may not have happened
    for i in current:
        lab.execute(lab.plain_insert, (f"{keys}:cas:{i}", 0), "ALL")
    not_applied = [0]
    plain = lwt_kind == "plain"

    async def op(ctx: Any, o: Any) -> None:
        if o.kind == "plain write" or (plain and o.kind == "insert if not exists"):
            await lab.aexecute(lab.plain_insert, (f"{keys}:p:{ctx.client}:{o.seq}", o.seq), "QUORUM")
        elif o.kind == "insert if not exists":
            await lab.aexecute(lab.insert_if_not_exists, (f"{keys}:i:{ctx.client}:{o.seq}", o.seq), "QUORUM")
        else:
            key, cur = f"{keys}:cas:{ctx.client}", current[ctx.client]
            if plain:
                await lab.aexecute(lab.plain_insert, (key, cur + 1), "QUORUM")
                current[ctx.client] = cur + 1
                return
            try:
                row = (await lab.aexecute(lab.update_if, (cur + 1, key, cur), "QUORUM"))[0]
            except Exception:
                known[ctx.client] = False
                raise
            if row[0]:
                current[ctx.client] = cur + 1
            else:  # not applied: the row tells the current value (after a timeout, our own CAS went through)
                not_applied[0] += known[ctx.client]
                current[ctx.client] = row[1]
            known[ctx.client] = True

    wl = Workload(
        keys=Uniform(1000),
        mix={"plain write": 0.5, "insert if not exists": 0.25, "update if v =": 0.25},
        clients=clients,
        ops=ops,
        duration=PHASE_CAP_S,
        seed=seed,
    )
    res = run(op, wl, driver=lab.driver, name="LWT vs plain")
    return LwtRun(res, not_applied[0])
