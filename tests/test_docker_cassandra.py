"""Cassandra on the docker provider: one node, and a two-datacenter cluster whose inter-DC links cross labkit's
latency proxy (proxy containers), with the same claims as the local provider's tests (tests/test_cassandra.py).

CI runs these inside its private engine's namespace (`make docker-test`), on an image with the official image's
contract that carries the local provider's jars and JVM flags. The clusters start through labkit's public API
(`labkit.stack(provider="docker")`); what it claims about containers is checked with the daemon itself
(tests/conftest.py DockerEngine) and what it claims about Cassandra with the driver, one node at a time.
"""

from __future__ import annotations

import statistics
import time

import pytest

import labkit
from labkit.services import cassandra_jars_version

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]
D_MS = 40.0  # one-way inter-DC delay


def session_for(ep, dc: str):  # noqa: ANN001, ANN201 - driver objects
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=dc)), request_timeout=15
    )
    cluster = Cluster(
        ep.contact_points, port=ep.port, protocol_version=5, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    return cluster, cluster.connect()


def median_ms(session, cql: str, cl, n: int) -> float:  # noqa: ANN001
    from cassandra.query import SimpleStatement

    st = SimpleStatement(cql, consistency_level=cl)
    session.execute(st)  # warm the path
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.execute(st)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def query_node(address: str, cql: str) -> list:
    """One query answered by exactly the node at `address` (a driver session pinned to it)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    pinned = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([address]), request_timeout=10)
    cluster = Cluster(
        [address], port=9042, protocol_version=5, execution_profiles={EXEC_PROFILE_DEFAULT: pinned}, connect_timeout=10
    )
    try:
        return list(cluster.connect().execute(cql))
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(docker_engine):
    st = labkit.stack(
        "cassandra", provider="docker", attach=False, cassandra={"nodes": "us:2,eu:1", "inter_dc_delay_ms": 0}
    )
    c = st.service("cassandra")
    cu, su = session_for(c.endpoint, "us")
    ce, se = session_for(c.endpoint, "eu")
    # schema changes wait for every node's agreement: give them a minute on a busy machine (the default is 15 s)
    su.execute(
        "CREATE KEYSPACE app WITH replication = {'class': 'NetworkTopologyStrategy', 'us': 2, 'eu': 1}", timeout=60
    )
    su.execute("CREATE TABLE app.kv (k int PRIMARY KEY, v text)", timeout=60)
    cu.control_connection.wait_for_schema_agreement(wait_time=60)
    c.sessions = {"us": su, "eu": se}
    yield c
    cu.shutdown()
    ce.shutdown()
    st.close()


def test_single_node_real_version_and_restart_after_kill(docker_engine):
    with labkit.stack("cassandra", provider="docker", attach=False) as st:
        one = st.service("cassandra")
        ep = one.endpoint
        assert ep.provider == "docker" and ep.host == "127.0.0.1" and ep.local_dc == "dc1" and one.health().ok
        # the server's own answer, and the same Cassandra the local provider runs (same jars in the image)
        if "labkit-local" in one.image:
            assert one.version() == cassandra_jars_version()
        assert one.version().startswith("5.0.")
        (container,) = [n["container"] for n in one.nodes]
        one.kill()
        assert docker_engine.state(container) == "exited" and not one.health().ok
        st.restart("cassandra")  # the same container again, on its data
        assert docker_engine.state(container) == "running" and one.health().ok


def test_cluster_layout_and_datacenters(cluster, docker_engine):
    ep = cluster.endpoint
    assert ep.local_dc == "us" and set(ep.extra["datacenters"]) == {"us", "eu"}
    cl, s = session_for(ep, "us")
    try:
        # the us session sees all three nodes; it connects (and so knows is_up) only in its own DC, the eu session
        # in eu
        assert sorted(h.datacenter for h in cl.metadata.all_hosts()) == ["eu", "us", "us"]
        for dc, session in (("us", s), ("eu", cluster.sessions["eu"])):
            up = [h.is_up for h in session.cluster.metadata.all_hosts() if h.datacenter == dc]
            assert up and all(up), f"{dc}: {up}"
        # every node knows the others by their proxy (broadcast) address: the proxies are in the gossip path
        peers = {str(r.peer) for r in s.execute("SELECT peer FROM system.peers_v2")}
        assert peers <= {n["proxy"] for n in cluster.nodes} and len(peers) == 2
    finally:
        cl.shutdown()
    # prefer_local (the rackdc file labkit mounts, read through -Dcassandra-rackdc.properties): us1 reaches its
    # same-DC peer us2 at us2's private address, and eu1 only through eu1's proxy
    nodes = {n["name"]: n for n in cluster.nodes}
    us1, us2, eu1 = nodes["us1"], nodes["us2"], nodes["eu1"]
    deadline, pref = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        rows = query_node(us1["address"], "SELECT peer, preferred_ip FROM system.peers_v2")
        pref = {str(r[0]): (str(r[1]) if r[1] else None) for r in rows}
        if pref.get(us2["proxy"]) == us2["address"]:
            break
        time.sleep(1)
    assert pref.get(us2["proxy"]) == us2["address"], pref
    assert pref.get(eu1["proxy"]) in (None, eu1["proxy"]), pref
    names = {n[part] for n in cluster.nodes for part in ("container", "proxy_container")}
    assert len(names) == 6 and names <= set(docker_engine.labelled())  # 3 nodes + 3 proxies, all labelled


def test_cross_dc_quorum_pays_the_proxy_delay_and_local_quorum_does_not(cluster):
    from cassandra import ConsistencyLevel as CL

    cluster.sessions["us"].execute("INSERT INTO app.kv (k, v) VALUES (2, 'x')")
    q = "SELECT v FROM app.kv WHERE k = 2"
    try:
        cluster.set_inter_dc_delay(D_MS)
        eu_local = median_ms(cluster.sessions["eu"], q, CL.LOCAL_QUORUM, 11)  # the eu replica
        eu_quorum = median_ms(cluster.sessions["eu"], q, CL.QUORUM, 11)  # 2 of 3: needs a us replica
        us_local = median_ms(cluster.sessions["us"], q, CL.LOCAL_QUORUM, 11)  # us1 + us2, both in us
    finally:
        cluster.set_inter_dc_delay(0)
    eu_quorum_0 = median_ms(cluster.sessions["eu"], q, CL.QUORUM, 11)
    print(
        f"\nD={D_MS:.0f} ms one-way: eu LOCAL_QUORUM {eu_local:.1f} ms, eu QUORUM {eu_quorum:.1f} ms "
        f"(at 0 ms: {eu_quorum_0:.1f} ms), us LOCAL_QUORUM (2 replicas in us) {us_local:.1f} ms"
    )
    # Bounds that load cannot move: the proxy holds every packet D ms each way, so a read that crosses it takes
    # >= 2*D however busy the machine is, and one that does not cross it stays far below 2*D (a difference of two
    # noisy medians against exactly 2*D failed by 1 ms under load 14: 100.6 - 22.0 ms).
    assert eu_quorum >= 2 * D_MS, f"cross-DC QUORUM {eu_quorum:.1f} ms: it did not pay 2*{D_MS:.0f} ms at the proxy"
    assert eu_local < 2 * D_MS, f"eu LOCAL_QUORUM {eu_local:.1f} ms: it crossed the latency proxy"
    assert us_local < 2 * D_MS, f"us LOCAL_QUORUM {us_local:.1f} ms: intra-DC traffic crossed the latency proxy"
    assert eu_quorum_0 < 2 * D_MS, f"after set_inter_dc_delay(0) QUORUM still takes {eu_quorum_0:.1f} ms"


def test_paused_node_fails_local_quorum_and_recovers_after_resume(cluster, docker_engine):
    from cassandra import ConsistencyLevel as CL
    from cassandra.query import SimpleStatement

    us = cluster.sessions["us"]
    us.execute("INSERT INTO app.kv (k, v) VALUES (3, 'p')")
    local_quorum = SimpleStatement("SELECT v FROM app.kv WHERE k = 3", consistency_level=CL.LOCAL_QUORUM)
    cluster.pause_node("us2")
    try:
        (us2,) = [n["container"] for n in cluster.nodes if n["name"] == "us2"]
        assert docker_engine.state(us2) == "paused"
        with pytest.raises(Exception) as err:  # LOCAL_QUORUM in us needs both us replicas
            us.execute(local_quorum, timeout=10)
        assert type(err.value).__name__ in (
            "ReadTimeout",
            "Unavailable",
            "OperationTimedOut",
            "NoHostAvailable",
            "ReadFailure",
        ), repr(err.value)
    finally:
        cluster.resume_node("us2")
    deadline, ok = time.monotonic() + 60, False
    while not ok and time.monotonic() < deadline:
        try:
            ok = us.execute(local_quorum, timeout=10).one()[0] == "p"
        except Exception:  # noqa: BLE001 - until gossip marks us2 up again
            time.sleep(0.5)
    assert ok, "LOCAL_QUORUM did not recover within 60 s after resume"
