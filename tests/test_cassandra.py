"""Cassandra on real JVMs: one node, a 2-DC cluster (us:2, eu:1) with the latency proxy, faults, clean errors.

One cluster and one single node are shared by the module (each start costs seconds of CPU on CI).
Needs Java 17; the jars are fetched once (`labkit fetch cassandra`), unless LABKIT_OFFLINE forbids it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from labkit.errors import BadParameter, BinaryNotFound, InsufficientResources, LabkitError, ServiceFailed
from labkit.services import cassandra as cmod
from labkit.services.cassandra import LocalCassandra, cds, jars, java, parse_nodes

pytestmark = pytest.mark.cassandra

D_MS = 60.0  # one-way inter-DC delay for the latency test


def alive(pids: list[int]) -> list[int]:
    out = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)


@pytest.fixture(scope="module")
def cassandra_jars() -> Path:
    try:
        cmod.find_java()
    except BinaryNotFound as e:
        pytest.skip(f"Cassandra tests need Java 17: {e}")
    lib = jars.fetch_cassandra(progress=False)
    cds.build_archive()  # what `labkit fetch cassandra` does after the jars (a no-op once it exists)
    return lib


def session_for(ep, dc: str):  # noqa: ANN001, ANN201 - driver objects
    """A driver session whose coordinators are in `dc` only (DCAwareRoundRobinPolicy, token aware)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=dc)), request_timeout=15
    )
    cluster = Cluster(
        ep.contact_points, port=ep.port, protocol_version=5, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    return cluster, cluster.connect()


@pytest.fixture(scope="module")
def single(cassandra_jars):
    c = LocalCassandra("cass-one")
    t0 = time.monotonic()
    c.start()
    c.ready_s = time.monotonic() - t0
    yield c
    c.stop()
    c.remove_data()


@pytest.fixture(scope="module")
def cluster(cassandra_jars):
    c = LocalCassandra("cass-2dc", nodes="us:2,eu:1")
    c.start()
    cu, su = session_for(c.endpoint, "us")
    ce, se = session_for(c.endpoint, "eu")
    su.execute("CREATE KEYSPACE app WITH replication = {'class': 'NetworkTopologyStrategy', 'us': 2, 'eu': 1}")
    su.execute("CREATE TABLE app.kv (k int PRIMARY KEY, v text)")
    c.wait_for_schema_agreement()
    c.sessions = {"us": su, "eu": se}
    yield c
    cu.shutdown()
    ce.shutdown()
    # stop() leaves no Java or proxy process: checked here, at the end, so no test stops the cluster another
    # test still needs (the tests run in any order)
    pids = [r["pid"] for r in c.pids()]
    c.stop()
    left = wait_gone(pids, 30)
    c.remove_data()
    assert len(pids) == 4 and left == [], f"stop() of 3 JVMs and the latency proxy {pids} left {left} running"


# --- errors before anything starts ----------------------------------------------------------------------------
def test_node_spec_syntax():
    assert parse_nodes("us:3,eu:2") == {"us": 3, "eu": 2}
    assert parse_nodes({"dc1": 1}) == {"dc1": 1}
    assert list(parse_nodes(" eu : 1 , us:2 ")) == ["eu", "us"]  # order kept: the first DC is local_dc
    for bad in ("us", "us:0", "us:x", "us:2,us:1", "", "u s:1", "us:10"):
        with pytest.raises(BadParameter, match="us:3,eu:2"):
            parse_nodes(bad)
    with pytest.raises(BadParameter, match="us:3,eu:2"):
        LocalCassandra("bad", nodes="three nodes please")


def test_wrong_java_version_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.21\" 2023-10-17' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LABKIT_JAVA_BIN", str(fake))
    with pytest.raises(BinaryNotFound, match=r"needs Java 17.*Java 11.*openjdk-17-jre-headless"):
        LocalCassandra("oldjava").start()


def test_missing_java_names_the_install(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_JAVA_BIN", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(java, "JAVA_GLOBS", [])
    with pytest.raises(BinaryNotFound, match="Java 17 not found: apt-get install openjdk-17-jre-headless"):
        LocalCassandra("nojava").start()
    monkeypatch.setenv("LABKIT_JAVA_BIN", str(tmp_path / "nope"))
    with pytest.raises(BinaryNotFound, match="LABKIT_JAVA_BIN=.* is not an executable"):
        cmod.find_java()


def test_jars_missing_and_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("LABKIT_OFFLINE", "1")
    with pytest.raises(LabkitError, match="labkit fetch cassandra"):
        jars.fetch_cassandra(progress=False)
    with pytest.raises(LabkitError, match="LABKIT_OFFLINE"):
        jars.cassandra_classpath()
    if shutil.which("java"):
        with pytest.raises(LabkitError, match="labkit fetch cassandra"):
            LocalCassandra("nojars").start()


def test_too_many_nodes_for_memory_is_refused_with_numbers(cassandra_jars):
    c = LocalCassandra("huge", nodes="us:9,eu:9", heap_mb=32768)
    with pytest.raises(InsufficientResources) as err:
        c.start()
    m = re.search(r"18 Cassandra node\(s\) need about (\d+) MB \((\d+) MB each\) but only (\d+) MB", str(err.value))
    assert m, str(err.value)
    need, each, avail = map(int, m.groups())
    # the footprint scales with the heap asked for (32 GB each), the total is what 18 of them need, and it is
    # refused because it exceeds the memory this machine has
    assert each >= 32768 and need == 18 * each and need > avail
    assert avail <= psutil.virtual_memory().total // 2**20
    # refused before anything ran: no process, not even its instance directory
    assert not c.dir.exists()


def test_no_maven_and_no_repository_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_MAVEN_REPO", raising=False)
    with pytest.raises(BinaryNotFound, match="install Maven .* or set LABKIT_MAVEN_REPO"):
        jars.maven_repository()
    monkeypatch.setenv("LABKIT_MAVEN_REPO", "ftp://nowhere")
    with pytest.raises(LabkitError, match="not an http"):
        jars.maven_repository()


def test_pinned_jar_list_matches_the_pinned_version():
    pins = jars.read_pins(jars.PINNED_VERSION)
    names = [rel.rsplit("/", 1)[-1] for rel, _ in pins]
    assert f"cassandra-all-{jars.PINNED_VERSION}.jar" in names
    assert any(n.startswith("jamm-") for n in names)
    assert all(len(sha) == 40 and int(sha, 16) >= 0 for _, sha in pins)


def test_pinned_download_verifies_sha1(tmp_path, monkeypatch):
    """The no-Maven path against Maven Central, on one small jar: a right sha1 passes, a wrong one fails."""
    if jars.offline():
        pytest.skip("LABKIT_OFFLINE is set: this test downloads one small jar from Maven Central")
    small = next((rel, sha) for rel, sha in jars.read_pins(jars.PINNED_VERSION) if rel.endswith("javax.inject-1.jar"))
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    if not os.environ.get("LABKIT_MAVEN_REPO"):
        mvn = shutil.which("mvn")
        repo = jars.maven_default_repository(mvn) if mvn else None
        if not repo:
            pytest.skip("neither LABKIT_MAVEN_REPO nor Maven to name a repository to download from")
        monkeypatch.setenv("LABKIT_MAVEN_REPO", repo)
    monkeypatch.setattr(jars, "read_pins", lambda v: [small])
    jars.fetch_pinned(jars.PINNED_VERSION, tmp_path / "ok" / "lib", lambda m: None)
    assert (tmp_path / "ok" / "lib" / "javax.inject-1.jar").is_file()
    monkeypatch.setattr(jars, "read_pins", lambda v: [(small[0], "0" * 40)])
    with pytest.raises(ServiceFailed, match="checksum mismatch"):
        jars.fetch_pinned(jars.PINNED_VERSION, tmp_path / "bad" / "lib", lambda m: None)


def test_node_that_fails_to_start_shows_its_log(cassandra_jars):
    c = LocalCassandra("broken", yaml_overrides={"num_tokens": "many"})
    with pytest.raises(ServiceFailed) as err:
        c.start()
    msg = str(err.value)
    assert "exited before it was ready" in msg and "system.log" in msg
    assert "num_tokens" in msg or "Invalid yaml" in msg or "ConfigurationException" in msg, msg
    assert wait_gone([r["pid"] for r in c.pids()], 10) == []
    c.remove_data()


# --- one node --------------------------------------------------------------------------------------------------
def test_single_node_serves_cql_and_reports_its_release_version(single):
    from cassandra.cluster import Cluster

    ep = single.endpoint
    assert ep.kind == "cassandra" and ep.extra["local_dc"] == "dc1" and ep.port == ep.extra["port"]
    assert ep.contact_points == [ep.host] and ep.host.startswith("127.0.")
    cl = Cluster(ep.contact_points, port=ep.port, protocol_version=5)
    try:
        s = cl.connect()
        release = s.execute("SELECT release_version FROM system.local").one()[0]
        s.execute("CREATE KEYSPACE one WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1}")
        s.execute("CREATE TABLE one.t (id int PRIMARY KEY, v text)")
        s.execute("INSERT INTO one.t (id, v) VALUES (1, 'hello')")
        assert s.execute("SELECT v FROM one.t WHERE id = 1").one()[0] == "hello"
    finally:
        cl.shutdown()
    assert single.version() == release and release.startswith("5.0.")
    assert single.health().ok
    print(
        f"\nsingle node ready in {single.ready_s:.1f} s, RSS "
        f"{psutil.Process(single.nodes[0].ref['pid']).memory_info().rss / 2**20:.0f} MB"
    )


def test_single_node_options_rebuild_it_from_a_record(single):
    rec = json.loads(json.dumps(single.to_record()))  # what a stack file holds
    other = LocalCassandra(rec["name"], instance_dir=Path(rec["dir"]), **rec["options"])
    other._adopt(rec)
    assert other.version() == single.version()
    assert {r["pid"] for r in other.pids()} == {r["pid"] for r in single.pids()}


def test_a_node_maps_the_class_data_sharing_archive(single):
    """The node's JVM maps the archive `labkit fetch cassandra` built for this JVM and these jars (cds.py), so
    its classes are not parsed and verified again at every start."""
    path = cds.archive_path(single.java, single.classpath)
    assert path.is_file(), f"no archive at {path}: `labkit fetch cassandra` builds it"
    pid = single.nodes[0].ref["pid"]
    assert f"-XX:SharedArchiveFile={path}" in psutil.Process(pid).cmdline()
    assert str(path) in Path(f"/proc/{pid}/maps").read_text(), "the JVM did not map the archive (-Xshare:auto)"


def test_the_archive_is_keyed_by_the_jvm_and_the_jars(tmp_path):
    fake_java, jar = tmp_path / "java", tmp_path / "lib" / "a.jar"
    jar.parent.mkdir()
    fake_java.write_text("jvm")
    jar.write_text("classes")
    first = cds.archive_path(fake_java, [jar])
    assert first.parent == tmp_path / "cds" and cds.jvm_flags(fake_java, [jar]) == []  # none built: no flag
    first.parent.mkdir()
    first.write_bytes(b"")
    assert cds.jvm_flags(fake_java, [jar]) == [f"-XX:SharedArchiveFile={first}"]
    os.utime(jar, (1, 1))  # new jars (or a new JVM) miss the old archive: nodes start without it
    assert cds.archive_path(fake_java, [jar]) != first and cds.jvm_flags(fake_java, [jar]) == []
    os.utime(jar, (2, 2))
    fake_java.write_text("another jvm")
    assert cds.archive_path(fake_java, [jar]) != first


# --- two datacenters -------------------------------------------------------------------------------------------
def test_two_dc_cluster_forms_and_driver_sees_both_dcs(cluster):
    ep = cluster.endpoint
    assert ep.extra["datacenters"].keys() == {"us", "eu"} and len(ep.extra["datacenters"]["us"]) == 2
    assert ep.local_dc == "us" and len(ep.contact_points) == 3
    hosts = cluster.sessions["us"].cluster.metadata.all_hosts()
    assert sorted(h.datacenter for h in hosts) == ["eu", "us", "us"]
    assert {h.endpoint.address for h in hosts} == set(ep.contact_points)  # clients go straight to the nodes


def test_nts_write_is_readable_with_local_one_in_each_dc(cluster):
    from cassandra import ConsistencyLevel as CL
    from cassandra.query import SimpleStatement

    w = SimpleStatement("INSERT INTO app.kv (k, v) VALUES (1, 'replicated')", consistency_level=CL.EACH_QUORUM)
    cluster.sessions["us"].execute(w)
    r = SimpleStatement("SELECT v FROM app.kv WHERE k = 1", consistency_level=CL.LOCAL_ONE)
    for dc in ("us", "eu"):
        rs = cluster.sessions[dc].execute(r)
        assert rs.one()[0] == "replicated"
        coordinator = rs.response_future.coordinator_host
        assert coordinator in ep_addresses(cluster, dc), f"{dc} read was coordinated by {coordinator}"


def ep_addresses(cluster, dc: str) -> list[str]:  # noqa: ANN001
    return cluster.endpoint.extra["datacenters"][dc]


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


def test_cross_dc_quorum_pays_the_proxy_delay_and_local_quorum_does_not(cluster):
    from cassandra import ConsistencyLevel as CL

    cluster.sessions["us"].execute("INSERT INTO app.kv (k, v) VALUES (2, 'x')")
    q = "SELECT v FROM app.kv WHERE k = 2"
    try:
        cluster.set_inter_dc_delay(D_MS)
        eu_local = median_ms(cluster.sessions["eu"], q, CL.LOCAL_QUORUM, 15)  # 1 replica in eu
        eu_quorum = median_ms(cluster.sessions["eu"], q, CL.QUORUM, 15)  # 2 of 3: needs a us replica
        us_local = median_ms(cluster.sessions["us"], q, CL.LOCAL_QUORUM, 15)  # us1 + us2, both in us
    finally:
        cluster.set_inter_dc_delay(0)
    print(
        f"\nD={D_MS:.0f} ms one-way: eu LOCAL_QUORUM {eu_local:.1f} ms, eu QUORUM {eu_quorum:.1f} ms, "
        f"us LOCAL_QUORUM (2 replicas in us) {us_local:.1f} ms"
    )
    assert eu_quorum - eu_local >= 2 * D_MS, (
        f"cross-DC QUORUM {eu_quorum:.1f} ms is not >= 2*{D_MS:.0f} ms slower than LOCAL_QUORUM {eu_local:.1f} ms"
    )
    # intra-DC traffic must bypass the proxy (prefer_local): crossing it would cost >= 2*D per read
    assert us_local < 2 * D_MS, f"us LOCAL_QUORUM {us_local:.1f} ms: intra-DC traffic crossed the latency proxy"


def test_paused_node_fails_local_quorum_and_recovers_after_resume(cluster):
    from cassandra import ConsistencyLevel as CL
    from cassandra.query import SimpleStatement

    us = cluster.sessions["us"]
    us.execute("INSERT INTO app.kv (k, v) VALUES (3, 'p')")
    local_quorum = SimpleStatement("SELECT v FROM app.kv WHERE k = 3", consistency_level=CL.LOCAL_QUORUM)
    quorum = SimpleStatement("SELECT v FROM app.kv WHERE k = 3", consistency_level=CL.QUORUM)
    node = cluster.node("us2")
    pid = node.ref["pid"]
    node.pause()
    try:
        deadline = time.monotonic() + 5  # SIGSTOP reaches every thread of the JVM asynchronously
        while psutil.Process(pid).status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
        # LOCAL_QUORUM in us needs both us replicas: with us2 paused it must fail (timeout or unavailable)
        with pytest.raises(Exception) as err:
            us.execute(local_quorum, timeout=10)
        assert type(err.value).__name__ in (
            "ReadTimeout",
            "Unavailable",
            "OperationTimedOut",
            "NoHostAvailable",
            "ReadFailure",
        ), repr(err.value)
        # QUORUM (2 of 3) can still be met by us1 + eu1
        deadline, ok = time.monotonic() + 45, False
        while not ok and time.monotonic() < deadline:
            try:
                ok = us.execute(quorum, timeout=10).one()[0] == "p"
            except Exception:  # noqa: BLE001 - until the coordinator stops waiting on us2
                time.sleep(0.5)
        assert ok, "QUORUM did not succeed with one of three replicas paused"
    finally:
        node.resume()
    deadline, ok = time.monotonic() + 60, False
    while not ok and time.monotonic() < deadline:
        try:
            ok = us.execute(local_quorum, timeout=10).one()[0] == "p"
        except Exception:  # noqa: BLE001 - until gossip marks us2 up again
            time.sleep(0.5)
    assert ok, "LOCAL_QUORUM did not recover within 60 s after resume"


def test_killed_node_restarts_on_its_data(cluster):
    from cassandra import ConsistencyLevel as CL
    from cassandra.query import SimpleStatement

    # its own row (not another test's), on every replica before the kill (a node an earlier test paused may
    # still be marked down for a moment: retry until a deadline)
    write = SimpleStatement("INSERT INTO app.kv (k, v) VALUES (4, 'survives')", consistency_level=CL.ALL)
    deadline, written = time.monotonic() + 60, False
    while not written and time.monotonic() < deadline:
        try:
            cluster.sessions["us"].execute(write, timeout=10)
            written = True
        except Exception:  # noqa: BLE001 - Unavailable until gossip sees every replica up
            time.sleep(0.5)
    assert written, "the row could not be written to all three replicas within 60 s"
    # commitlog_sync is periodic (every 10 s): after a kill -9, replay stops at the last sync marker, so a write
    # acknowledged less than one period before the crash may be gone (Cassandra's documented window). Wait past
    # one sync, then crash: what must survive is what the node had made durable.
    time.sleep(11)
    node = cluster.node("eu1")
    old = node.ref["pid"]
    node.kill()
    assert wait_gone([old], 10) == [] and not node.alive()
    assert not cluster.health().ok
    node.start()
    assert node.ref["pid"] != old and node.alive()
    r = SimpleStatement("SELECT v FROM app.kv WHERE k = 4", consistency_level=CL.LOCAL_ONE)
    # LOCAL_ONE in eu reads eu1 alone (the only eu replica): the row comes from its own disk, not a repair
    deadline, value = time.monotonic() + 60, None
    while value != "survives" and time.monotonic() < deadline:
        try:
            row = cluster.sessions["eu"].execute(r, timeout=10).one()
            value = row[0] if row is not None else "row missing"
        except Exception as e:  # noqa: BLE001 - the driver reconnects to the restarted node
            value = type(e).__name__
        if value != "survives":
            time.sleep(0.5)
    assert value == "survives", f"eu1 after restart: last read gave {value!r}"
    assert cluster.health().ok


def test_cluster_record_rebuilds_per_node_handles(cluster):
    rec = json.loads(json.dumps(cluster.to_record()))
    other = LocalCassandra(rec["name"], instance_dir=Path(rec["dir"]), **rec["options"])
    other._adopt(rec)
    assert [n.name for n in other.nodes] == ["us1", "us2", "eu1"]
    assert other.node("us2").ref["pid"] == cluster.node("us2").ref["pid"]
    assert {r["pid"] for r in other.pids()} == {r["pid"] for r in cluster.pids()}
    assert other.health().ok


def test_cluster_of_a_killed_owner_is_reaped(cassandra_jars, tmp_path):
    """A process that started a cluster through labkit.stack() is SIGKILLed: nothing of it may survive."""
    from labkit.services import stack as stacks

    script = textwrap.dedent("""
        import json, sys, time, labkit
        st = labkit.stack("cassandra", attach=False)
        print(json.dumps([r["pid"] for r in st.service("cassandra").pids()]), flush=True)
        time.sleep(600)
    """)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = owner.stdout.readline()
        pids = json.loads(line)
        assert len(pids) == 1 and alive(pids) == pids  # one JVM (a single DC has no latency proxy)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    stacks.reap_orphans()  # the watchdog may already have done it; either way nothing must be left
    assert wait_gone(pids, 30) == []


# The docker provider's Cassandra tests (one node; two datacenters through the latency proxy) are in
# tests/test_docker_cassandra.py (CI: `make docker-test`).
