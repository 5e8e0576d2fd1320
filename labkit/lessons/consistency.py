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
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadParameter, NotRunning
from labkit.history import History, Operation, Report, check
from labkit.load import Uniform, Workload, run
from labkit.load.drivers import Driver, consistency_level, settle_exception, settle_result

__all__ = [
    "LEVELS",
    "PAIRS",
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

KEYSPACE = "lab05"
LEVELS = ("ONE", "QUORUM", "ALL")
PAIRS: list[tuple[str, str]] = [(w, r) for w in LEVELS for r in LEVELS]
DDL_TIMEOUT_S = 120.0  # schema changes wait for every node; minutes on a loaded machine, not a failure
EXPIRE_S = 2.5  # > write_request_timeout (2 s in labkit's cassandra.yaml): copies sent to a paused node expire
RESTART_TIMEOUT_S = 900.0  # a JVM start takes ~20 s on an idle 2-core machine, 5 min on an overloaded one
LAG_WRITE_CAP_S = 3.0  # C's pause stays short of its conviction by the failure detector (which makes hints flow)
PHASE_CAP_S = 60.0  # a phase that has not done its operations after this long stops anyway


def replicas(level: str, n: int = 3) -> int:
    """How many replicas a consistency level waits for, out of ``n``."""
    return {"ONE": 1, "TWO": 2, "THREE": 3, "QUORUM": n // 2 + 1, "ALL": n}[level]


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


# --------------------------------------------------------------------------------------------- the cluster


class Lab:
    """The lesson's cluster: one cassandra-driver session with an execution profile per coordinator choice.

    ``"all"`` round-robins over every node, ``"healthy"`` over all but the lagging node (the last one), and
    ``"via:<node>"`` pins the coordinator to one node (WhiteListRoundRobinPolicy), the way a client in one
    rack or one app server talks to its nearest node.
    """

    def __init__(self, service: Any, stack: Any = None, *, request_timeout: float = 6.0) -> None:
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import RoundRobinPolicy, WhiteListRoundRobinPolicy

        nodes = getattr(service, "nodes", None)
        if not nodes or len(nodes) < 3:
            raise BadParameter("lesson 05 needs a cluster of 3 nodes: st.add('cassandra', nodes='dc1:3')")
        self.service, self.stack = service, stack
        self.nodes = list(nodes)
        self.lagging = self.nodes[-1]
        ep = service.endpoint
        addrs = [n.address for n in self.nodes]

        def profile(policy: Any) -> Any:
            return ExecutionProfile(load_balancing_policy=policy, request_timeout=request_timeout)

        profiles = {
            EXEC_PROFILE_DEFAULT: profile(RoundRobinPolicy()),
            "all": profile(RoundRobinPolicy()),
            "healthy": profile(WhiteListRoundRobinPolicy(addrs[:-1])),
        }
        for n in self.nodes:
            profiles[f"via:{n.name}"] = profile(WhiteListRoundRobinPolicy([n.address]))
        self.cluster = Cluster(
            addrs,
            port=ep.port,
            protocol_version=5,
            execution_profiles=profiles,
            connect_timeout=30,
            control_connection_timeout=30,
            max_schema_agreement_wait=120,
        )
        self.session = self.cluster.connect()
        self.session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 3}",
            timeout=DDL_TIMEOUT_S,
        )
        # speculative_retry NONE: a read at ONE asks exactly one replica (its coordinator's own copy), so what
        # the lagging replica holds is what the client sees
        for table in ("kv", "lwt"):
            self.session.execute(
                f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.{table} (k text PRIMARY KEY, v bigint) "
                "WITH speculative_retry = 'NONE'",
                timeout=DDL_TIMEOUT_S,
            )
        if hasattr(service, "wait_for_schema_agreement"):
            service.wait_for_schema_agreement()
        p = self.session.prepare
        self.write = p(f"UPDATE {KEYSPACE}.kv SET v = ? WHERE k = ?")
        self.read = p(f"SELECT v FROM {KEYSPACE}.kv WHERE k = ?")
        self.plain_insert = p(f"INSERT INTO {KEYSPACE}.lwt (k, v) VALUES (?, ?)")
        self.insert_if_not_exists = p(f"INSERT INTO {KEYSPACE}.lwt (k, v) VALUES (?, ?) IF NOT EXISTS")
        self.update_if = p(f"UPDATE {KEYSPACE}.lwt SET v = ? WHERE k = ? IF v = ?")
        self.driver = _LabDriver(self)

    def execute(self, stmt: Any, params: Sequence[Any], level: str, via: str = "all") -> Any:
        return self.session.execute(self._bind(stmt, params, level), execution_profile=via)

    async def aexecute(self, stmt: Any, params: Sequence[Any], level: str, via: str = "all") -> Any:
        """execute_async bridged to asyncio (the driver's I/O thread resolves the future)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        rf = self.session.execute_async(self._bind(stmt, params, level), execution_profile=via)
        rf.add_callbacks(
            lambda rows: loop.call_soon_threadsafe(settle_result, fut, rows),
            lambda exc: loop.call_soon_threadsafe(settle_exception, fut, exc),
        )
        return await fut

    @staticmethod
    def _bind(stmt: Any, params: Sequence[Any], level: str) -> Any:
        b = stmt.bind(tuple(params))
        b.consistency_level = consistency_level(level)
        return b

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each node's JVM, in MB (what a Binder budget has to hold)."""
        out = {}
        for n in self.nodes:
            p = n.process()
            out[n.name] = round(p.memory_info().rss / 2**20) if p is not None else float("nan")
        return out

    def node_table(self) -> Any:
        import pandas as pd

        rss = self.rss_mb()
        return pd.DataFrame(
            [
                {
                    "node": n.name,
                    "address": n.address,
                    "role": "lagging replica (C)" if n is self.lagging else "replica",
                    "alive": n.alive(),
                    "RSS (MB)": rss[n.name],
                }
                for n in self.nodes
            ]
        )

    def wait_until_down_seen(self, timeout: float = 120.0) -> float:
        """After a kill: wait until the live nodes' failure detector has convicted the dead one, i.e. an ALL
        read answers Unavailable (before that it times out). Returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                self.execute(self.read, ("probe",), "ALL", "healthy")
            except Exception as exc:  # noqa: BLE001 - the probe's answer is the information
                if type(exc).__name__ == "Unavailable":
                    return time.monotonic() - t0
            time.sleep(0.3)
        raise NotRunning(f"after {timeout:.0f} s the live nodes still do not report {self.lagging.name} down")

    def restart_lagging(self) -> float:
        """Start the killed node again on its data; re-record its PID in the stack. Returns seconds taken."""
        t0 = time.monotonic()
        self.lagging.start(timeout=RESTART_TIMEOUT_S)
        if self.stack is not None:
            self.stack.save()
        return time.monotonic() - t0

    def close(self) -> None:
        for n in self.nodes:  # never leave a node paused behind
            if n.alive():
                n.resume()
        self.cluster.shutdown()


class _LabDriver(Driver):
    """labkit.load's view of the Lab: every client shares the one session."""

    kind = "cassandra"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    async def aconnect(self) -> Lab:
        return self.lab

    async def aclose(self, conn: Any) -> None:
        """Shared session: Lab.close() closes it."""

    def is_disconnect(self, exc: BaseException) -> bool:
        # Unavailable answers at once: back off a little instead of spinning on it
        return type(exc).__name__ in ("Unavailable", "NoHostAvailable") or isinstance(exc, OSError)


# --------------------------------------------------------------------------------------- recorded workloads


def _run_id() -> str:
    return secrets.token_hex(3)  # fresh keys per run: nothing left from an earlier run reads as a phantom


def _pair_op(
    lab: Lab,
    hist: History,
    pairs: Sequence[tuple[str, str]],
    keys: str,
    counter: Any,
    write_via: str,
    read_via: Callable[[], str],
    phase: str,
) -> Callable[..., Any]:
    """A load operation: client i plays pair i % len(pairs), writing unique values / reading its pair's keys."""

    async def op(ctx: Any, o: Any) -> None:
        w, r = pairs[ctx.client % len(pairs)]
        key = f"{keys}:{w}/{r}:{o.rank}"
        if o.kind == "write":
            value = next(counter)
            with hist.record(ctx.client, "write", key, value, w=w, r=r, phase=phase):
                await lab.aexecute(lab.write, (value, key), w, write_via)
        else:
            via = read_via()
            with hist.record(ctx.client, "read", key, w=w, r=r, phase=phase, via=via) as rec:
                rows = list(await lab.aexecute(lab.read, (key,), r, via))
                rec.value = rows[0].v if rows else None

    return op


def _workload(
    n_clients: int,
    keys_per_pair: int,
    ops_per_client: int | None,
    seed: int,
    read_share: float = 0.5,
    cap_s: float = PHASE_CAP_S,
) -> Workload:
    """A phase ends after ``ops_per_client`` operations per client on average (counts, not seconds: a loaded
    machine gives the same evidence, only later), or after ``cap_s`` seconds."""
    return Workload(
        keys=Uniform(keys_per_pair),
        mix={"read": read_share, "write": 1 - read_share},
        clients=n_clients,
        ops=None if ops_per_client is None else n_clients * ops_per_client,
        duration=cap_s,
        seed=seed,
    )


def _validate(
    pairs: Sequence[tuple[str, str]], clients_per_pair: int, keys_per_pair: int, ops_per_client: int
) -> list[tuple[str, str]]:
    pairs = [(str(w).upper(), str(r).upper()) for w, r in pairs]
    for w, r in pairs:
        if w not in LEVELS or r not in LEVELS:
            raise BadParameter(f"pair ({w}, {r}): consistency levels in this lesson are {', '.join(LEVELS)}")
    if not pairs or clients_per_pair < 1 or keys_per_pair < 1 or ops_per_client < 1:
        raise BadParameter(
            "need at least one (write, read) pair, clients_per_pair >= 1, keys_per_pair >= 1 and ops_per_client >= 1"
        )
    return pairs


def _has_levels(pair: tuple[str, str], op: Operation) -> bool:
    """Whether ``op`` was run at the (write, read) consistency levels ``pair``."""
    return (op.tags.get("w"), op.tags.get("r")) == pair


@dataclass
class _PairRun:
    history: History
    pairs: list[tuple[str, str]]
    reports: dict[tuple[str, str], Report] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pair in self.pairs:
            self.reports[pair] = check(self.history.filter(functools.partial(_has_levels, pair)))

    def ops(self, pair: tuple[str, str], kind: str, **tags: Any) -> list[Operation]:
        return [
            o
            for o in self.history.ops
            if (o.tags.get("w"), o.tags.get("r")) == pair
            and o.kind == kind
            and all(o.tags.get(k) == v for k, v in tags.items())
        ]


@dataclass
class LaggingRun(_PairRun):
    """One lagging-replica cycle: all pairs at once, C paused while clients write, then reads through C."""

    lagging: str = ""
    paused_s: float = 0.0

    def reads_via_lagging(self, pair: tuple[str, str]) -> int:
        return sum(1 for o in self.ops(pair, "read", phase="read-through-C") if o.outcome == "ok")


@dataclass
class NodeDownRun(_PairRun):
    """Availability of every pair with C killed, and the durability history of QUORUM clients across the
    kill and the restart (with final reads at ALL)."""

    durable: History = field(default_factory=History)
    durable_report: Report | None = None
    down_detected_s: float = 0.0
    restart_s: float = 0.0
    node: str = ""

    def availability(self, pair: tuple[str, str], kind: str) -> float:
        ops = self.ops(pair, kind)
        return sum(o.outcome == "ok" for o in ops) / len(ops) if ops else float("nan")

    def errors(self, level: str) -> dict[str, int]:
        """Error names of the operations at ``level`` (writes at W=level, reads at R=level)."""
        ops = [
            o
            for o in self.history.ops
            if (o.kind == "write" and o.tags.get("w") == level) or (o.kind == "read" and o.tags.get("r") == level)
        ]
        out: dict[str, int] = {}
        for o in ops:
            if o.error:
                out[o.error] = out.get(o.error, 0) + 1
        return out


def lagging_replica(
    lab: Lab,
    pairs: Sequence[tuple[str, str]] = PAIRS,
    *,
    clients_per_pair: int = 2,
    keys_per_pair: int = 10,
    ops_per_client: int = 20,
    seed: int = 0,
    lag: bool = True,
) -> LaggingRun:
    """All ``pairs`` at once: C paused while clients write (through A/B) and read (through A/B); after C has
    missed the writes (paused > the write timeout), it resumes and the clients read through C.
    ``lag=False`` runs the same phases without pausing C (the control)."""
    pairs = _validate(pairs, clients_per_pair, keys_per_pair, ops_per_client)
    hist, counter, keys = History(), itertools.count(1), _run_id()
    n = len(pairs) * clients_per_pair
    c = lab.lagging
    t_pause = time.monotonic()
    if lag:
        c.pause()
    try:
        run(
            _pair_op(lab, hist, pairs, keys, counter, "healthy", lambda: "healthy", "C-lagging"),
            _workload(n, keys_per_pair, ops_per_client, seed, cap_s=LAG_WRITE_CAP_S),
            driver=lab.driver,
            name="writes while C lags",
        )
        time.sleep(EXPIRE_S)  # C's copies of the last writes expire in its inbox: it has missed them
    finally:
        if lag:
            c.resume()
    paused = time.monotonic() - t_pause
    run(
        _pair_op(lab, hist, pairs, keys, counter, "healthy", lambda: f"via:{c.name}", "read-through-C"),
        _workload(n, keys_per_pair, ops_per_client, seed + 1, read_share=0.9),
        driver=lab.driver,
        name="reads through C",
    )
    return LaggingRun(hist, pairs, lagging=c.name, paused_s=paused if lag else 0.0)


def node_down(
    lab: Lab,
    pairs: Sequence[tuple[str, str]] = PAIRS,
    *,
    clients_per_pair: int = 2,
    keys_per_pair: int = 10,
    ops_per_client: int = 20,
    durable_clients: int = 4,
    durable_keys: int = 50,
    seed: int = 0,
    restart: bool = True,
) -> NodeDownRun:
    """Kill C under QUORUM writes, measure every pair's availability while it is down, restart it, and
    read every durable key at ALL (the final reads the lost-write rule judges)."""
    pairs = _validate(pairs, clients_per_pair, keys_per_pair, ops_per_client)
    hist, durable, counter, keys = History(), History(), itertools.count(1), _run_id()
    stop = threading.Event()
    qq = [("QUORUM", "QUORUM")]
    box: dict[str, Any] = {}

    def background() -> None:
        try:
            run(
                _pair_op(lab, durable, qq, keys + "d", counter, "healthy", lambda: "healthy", "durable"),
                _workload(durable_clients, durable_keys, None, seed + 7, read_share=0.3, cap_s=3600.0),
                driver=lab.driver,
                stop=stop,
                name="QUORUM writers",
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            box["error"] = exc

    bg = threading.Thread(target=background, name="lab05-quorum-writers", daemon=True)
    bg.start()
    c = lab.lagging
    try:
        time.sleep(0.5)
        c.kill()
        detected = lab.wait_until_down_seen()
        run(
            _pair_op(lab, hist, pairs, keys, counter, "healthy", lambda: "healthy", "C-down"),
            _workload(len(pairs) * clients_per_pair, keys_per_pair, ops_per_client, seed),
            driver=lab.driver,
            name="one node down",
        )
        restart_s = lab.restart_lagging() if restart else 0.0
        time.sleep(0.5)
    finally:
        stop.set()
        bg.join(30)
        if not c.alive() and restart:
            lab.restart_lagging()
    if "error" in box:
        raise box["error"]
    final_reads(lab, durable, sorted({o.key for o in durable.ops}))
    res = NodeDownRun(hist, pairs, durable=durable, down_detected_s=detected, restart_s=restart_s, node=c.name)
    res.durable_report = check(durable)
    return res


def final_reads(lab: Lab, hist: History, keys: list[str], timeout: float = 60.0) -> None:
    """Read every key once at ALL, retrying while the restarted node is not yet seen up (Unavailable)."""
    deadline = time.monotonic() + timeout
    for key in keys:
        while True:
            try:
                with hist.record(-1, "read", key, w="QUORUM", r="ALL", phase="final") as rec:
                    rows = list(lab.execute(lab.read, (key,), "ALL", "all"))
                    rec.value = rows[0].v if rows else None
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


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
    keys = _run_id()
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


# tables, plots, checkpoints and the exercise's self-check live next door; the notebook sees one module
from labkit.lessons.consistency_checks import (  # noqa: E402
    check_lwt_slower,
    check_no_lost_writes,
    check_node_down,
    check_one_reads_stale,
    check_quorum_never_stale,
    check_stale_rule,
    plot_rwn,
    rwn_table,
)
