"""Lesson 05's recorded scenarios: every operation of every client goes into a :class:`labkit.history.History`,
which :func:`labkit.history.check` then searches for stale reads and lost writes.

- :func:`lagging_replica`: node C paused while clients write (its copies expire in its inbox), then reads
  through C: stale at ONE, fresh at QUORUM (R + W > N).
- :func:`node_down`: C killed under QUORUM writers; every (W, R) pair's availability while it is down, then a
  restart and final reads at ALL for the lost-write rule.

The concurrent clients run through ``labkit.load``; each client owns one (write CL, read CL) pair and its own
keys, so a client stuck in an ALL write that times out slows no other pair.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadParameter
from labkit.history import History, Operation, Report, check
from labkit.lessons.consistency_cluster import LEVELS, PAIRS, Lab
from labkit.load import Uniform, Workload, run

__all__ = [
    "EXPIRE_S",
    "LAG_WRITE_CAP_S",
    "PHASE_CAP_S",
    "LaggingRun",
    "NodeDownRun",
    "final_reads",
    "lagging_replica",
    "node_down",
    "run_id",
]

EXPIRE_S = 2.5  # > write_request_timeout (2 s in labkit's cassandra.yaml): copies sent to a paused node expire


LAG_WRITE_CAP_S = 3.0  # C's pause stays short of its conviction by the failure detector (which makes hints flow)


PHASE_CAP_S = 60.0  # a phase that has not done its operations after this long stops anyway


def run_id() -> str:
    """A fresh key prefix per run: nothing left from an earlier run reads as a phantom."""
    return secrets.token_hex(3)


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
    hist, counter, keys = History(), itertools.count(1), run_id()
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
    hist, durable, counter, keys = History(), History(), itertools.count(1), run_id()
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
