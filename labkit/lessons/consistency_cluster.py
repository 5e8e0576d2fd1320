"""Lesson 05's cluster: 3 Cassandra nodes (RF=3), one driver session, and the coordinator each request goes
through.

The :class:`Lab` creates the keyspace and tables (``speculative_retry = 'NONE'``, so a read at ONE asks exactly
one replica), prepares the statements the scenarios run, and picks coordinators by execution profile:
``"all"`` round-robins over every node, ``"healthy"`` over all but the lagging node (the last one), and
``"via:<node>"`` pins one node. It also pauses, kills and restarts that node for the scenarios
(:mod:`labkit.lessons.consistency_runs`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from labkit.errors import BadParameter, NotRunning
from labkit.load.drivers import Driver, consistency_level, settle_exception, settle_result

__all__ = ["DDL_TIMEOUT_S", "KEYSPACE", "LEVELS", "PAIRS", "RESTART_TIMEOUT_S", "Lab", "replicas"]

KEYSPACE = "lab05"


LEVELS = ("ONE", "QUORUM", "ALL")


PAIRS: list[tuple[str, str]] = [(w, r) for w in LEVELS for r in LEVELS]


DDL_TIMEOUT_S = 120.0  # schema changes wait for every node; minutes on a loaded machine, not a failure


RESTART_TIMEOUT_S = 900.0  # a JVM start takes ~20 s on an idle 2-core machine, 5 min on an overloaded one


def replicas(level: str, n: int = 3) -> int:
    """How many replicas a consistency level waits for, out of ``n``."""
    return {"ONE": 1, "TWO": 2, "THREE": 3, "QUORUM": n // 2 + 1, "ALL": n}[level]


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
