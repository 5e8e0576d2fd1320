"""The two-continent user store that lessons 06 and 07 share, on a real two-datacenter Cassandra.

The cluster is labkit's local one: nodes in datacenters "us" and "eu", every inter-DC message crossing the
userspace latency proxy (which also counts the bytes crossing the link and can cut it). Clients per region are
driver sessions whose coordinators are in that region only (DCAwareRoundRobinPolicy(local_dc=...), token
aware), the way an app server on each continent talks to its nearest Cassandra nodes.

Keyspaces: ``geo_global`` (replicated on both continents) and ``geo_us`` / ``geo_eu`` (one continent each),
each with a ``users`` table; every user has a home continent (:func:`user_home`). Lesson 06 times the users
table under each placement, lesson 07 adds its own tables to the same keyspaces and moves data between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labkit import profile
from labkit.errors import BadParameter
from labkit.load.drivers import consistency_level

__all__ = ["CLS", "GLOBAL_KS", "REGIONS", "Geo", "connect", "nodes_spec", "session_for", "user_home", "user_op"]

CLS = ("LOCAL_QUORUM", "QUORUM", "EACH_QUORUM")  # the levels that differ once replicas sit on two continents
REGIONS = ("us", "eu")
GLOBAL_KS = "geo_global"


def nodes_spec() -> str:
    """Full: two nodes per DC (LOCAL_QUORUM needs both local replicas). CI and Binder (light, ~2 GB for
    everything, ~400 MB per light node): one node per DC, where LOCAL_QUORUM is one local replica and QUORUM is
    still both continents, so every claim keeps its meaning."""
    return "us:2,eu:2" if profile.current() == "full" else "us:1,eu:1"


def user_home(user_id: int) -> str:
    """Each user lives on one continent (even ids in the US, odd in Europe)."""
    return REGIONS[user_id % 2]


@dataclass
class Geo:
    """A two-DC cluster with one driver session per region and the store's keyspaces."""

    cluster: Any
    sessions: dict[str, Any]
    rf: dict[str, int]
    _clusters: list[Any] = field(default_factory=list, repr=False)
    _prepared: dict[str, Any] = field(default_factory=dict, repr=False)

    def prepared(self, region: str, cql: str) -> Any:
        """``cql`` prepared once in ``region``'s session (the driver's default consistency level)."""
        key = f"{region}|{cql}"
        if key not in self._prepared:
            self._prepared[key] = self.sessions[region].prepare(cql)
        return self._prepared[key]

    def statement(self, region: str, cql: str, cl: str) -> Any:
        """``cql`` prepared once in ``region`` with its own consistency level (bind or execute it with values)."""
        key = f"{region}|{cl}|{cql}"
        if key not in self._prepared:
            st = self.sessions[region].prepare(cql)
            st.consistency_level = consistency_level(cl)
            self._prepared[key] = st
        return self._prepared[key]

    def link_bytes(self) -> int:
        """Bytes that have crossed the inter-DC link so far (both directions), as the latency proxy counts them."""
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
            f"lessons 06 and 07 need datacenters 'us' and 'eu', this cluster has {sorted(dcs)}: start it "
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


def user_op(
    geo: Geo,
    region: str,
    keyspace: Callable[[int], str],
    cl: str,
    value: str,
    acked: list[int] | None = None,
    user_of: Callable[[int], int] = lambda r: r,
) -> Callable[..., None]:
    """A labkit.load operation: read or write one user's row from ``region`` at consistency ``cl``, in the
    keyspace ``keyspace(user_id)`` names (user ids are ``user_of(key rank)``); writes acknowledged go to ``acked``."""
    level = consistency_level(cl)
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
