"""Short CQL conversations labkit itself has with nodes (readiness, peers, schema), through the Python driver.

Both providers use these: a node is ready when it answers a query, and a cluster has formed when every node
lists every other as a peer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

READY_CQL = "SELECT release_version FROM system.local"


def query_one(address: str, port: int, cql: str, timeout: float = 5.0) -> list[Any]:
    """Run one query on exactly one node (a short-lived driver session pinned to it); the rows."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    pinned = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([address]), request_timeout=timeout)
    cluster = Cluster(
        [address],
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: pinned},
        connect_timeout=timeout,
        control_connection_timeout=timeout,
        protocol_version=5,
        schema_metadata_enabled=False,
        token_metadata_enabled=False,
    )
    try:
        session = cluster.connect()
        return list(session.execute(cql, timeout=timeout))
    finally:
        cluster.shutdown()


def release_version(address: str, port: int, timeout: float = 5.0) -> str:
    """The Cassandra version one node reports (it answers CQL)."""
    return str(query_one(address, port, READY_CQL, timeout=timeout)[0][0])


def peers_converged(nodes: Sequence[tuple[str, int, str]]) -> bool:
    """True when every node, given as (CQL address, CQL port, broadcast address), lists all the others as peers."""
    want = {broadcast for _, _, broadcast in nodes}
    for address, port, broadcast in nodes:
        rows = query_one(address, port, "SELECT peer FROM system.peers_v2")
        if {str(r[0]) for r in rows} | {broadcast} != want:
            return False
    return True
