"""What a Cassandra node is configured with: its cassandra.yaml, rackdc file, logback config and JVM flags.

The local provider writes these for each node (LocalCassandra), CI's locally built image bakes the same ones in
(labkit/services/docker_images.py), and the docker provider passes the portable part through JVM_OPTS.

Profiles: "light" (the default: serial GC, heap 64 MB growing to 192 MB, C1 JIT only, one small Netty arena,
tiny caches and memtables; an idle node holds ~390 MB resident, and a 3-node cluster under lesson 05's
workload ~950 MB in all, PSS: benchmarks/cassandra_memory.py measures each setting) and "full" (heap 768 MB,
G1, full JIT). Each node is one JVM started the way Cassandra 5.0's own scripts start it on Java 17 (module
exports/opens, the jamm agent, -Dcassandra.config=file://...), with fast dev-start settings (FAST_START: no
wait for gossip to settle, short ring delay, one token per node, no bootstrap).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROFILES: dict[str, dict[str, int]] = {
    # footprint_mb: resident memory per node we plan for (measured: see benchmarks/cassandra_memory.py)
    "light": {"heap_mb": 192, "footprint_mb": 450},
    "full": {"heap_mb": 768, "footprint_mb": 1300},
}
# The light profile (Binder's ~2 GB, CI, and every stack that does not ask otherwise): each setting's cost in
# resident memory was measured on its own in benchmarks/cassandra_memory.py. Durability is untouched: the
# commitlog stays on (periodic sync, as Cassandra ships), so a kill -9 loses no acknowledged write that the
# lessons count on (a write is in the commitlog of every replica that acknowledged it).
LIGHT_JVM: tuple[str, ...] = (
    # the serial collector: no concurrent GC threads, no remembered sets or card tables of G1 (~45 MB of native
    # memory at this heap size); pauses of a few ms on a heap this small
    "-XX:+UseSerialGC",
    # the heap starts small and grows on demand up to -Xmx (heap_mb): an idle node keeps only what it uses
    "-Xms{min_heap}m",
    "-Xmx{heap}m",
    "-XX:TieredStopAtLevel=1",  # C1 only: faster start and a smaller code cache on 2 cores
    "-XX:ReservedCodeCacheSize=32m",
    "-XX:CICompilerCount=1",
    "-XX:MaxDirectMemorySize=192m",
    # Netty's pooled allocator: one arena of 4 MiB chunks instead of 2 x cores arenas of 16 MiB chunks, no
    # per-thread caches (the native protocol of a lab serves a handful of connections)
    "-Dio.netty.allocator.numDirectArenas=1",
    "-Dio.netty.allocator.numHeapArenas=1",
    "-Dio.netty.allocator.maxOrder=9",
    "-Dio.netty.allocator.useCacheForAllThreads=false",
)
LIGHT_YAML: dict[str, Any] = {
    "key_cache_size": "0MiB",
    "counter_cache_size": "0MiB",
    "file_cache_size": "4MiB",
    "networking_cache_size": "4MiB",
    "memtable_allocation_type": "heap_buffers",
    "memtable_heap_space": "24MiB",
    "memtable_offheap_space": "16MiB",
    "concurrent_compactors": 1,
}
FULL_JVM: tuple[str, ...] = (
    "-Xms{heap}m",
    "-Xmx{heap}m",
    # jvm17-server.options: G1 (region size left to the JVM: 16m regions are too big for a small heap)
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)
FULL_YAML: dict[str, Any] = {
    "key_cache_size": "0MiB",
    "counter_cache_size": "0MiB",
    "file_cache_size": "16MiB",
    "networking_cache_size": "16MiB",
    "memtable_heap_space": "128MiB",
    "memtable_offheap_space": "128MiB",
    "concurrent_compactors": 1,
}
LIGHT_MIN_HEAP_MB = 64
# fast start for a dev cluster on one machine (both providers: the docker one passes them in JVM_OPTS)
FAST_START: tuple[str, ...] = (
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=1000",
    "-Dcassandra.consistent.rangemovement=false",
    "-Dcassandra.superuser_setup_delay_ms=0",
    # the per-row memtable overhead Cassandra would otherwise estimate at every start by filling a skip list with
    # 100,000 rows and measuring it (seconds of CPU); 180 bytes is what that estimate logs on Java 17 with
    # compressed oops ("Estimated SkipListMemtable row overhead: 180"), so memtables are accounted the same
    "-Dcassandra.memtable.row_overhead_size=180",
)


def profile_jvm(profile: str, heap_mb: int) -> list[str]:
    """The profile's heap, collector, JIT and Netty flags (LIGHT_JVM or FULL_JVM) for a heap of heap_mb."""
    flags = LIGHT_JVM if profile == "light" else FULL_JVM
    low = min(heap_mb, LIGHT_MIN_HEAP_MB)
    return [f.format(heap=heap_mb, min_heap=low) for f in flags]


def profile_yaml(profile: str) -> dict[str, Any]:
    """The profile's caches and memtable sizes (LIGHT_YAML or FULL_YAML); a cluster's yaml_overrides still win."""
    return dict(LIGHT_YAML if profile == "light" else FULL_YAML)


def node_yaml(
    *,
    cluster_name: str,
    node_dir: Path,
    token: int,
    seeds: str,
    listen: str,
    broadcast: str,
    storage_port: int,
    native_port: int,
) -> dict[str, Any]:
    """cassandra.yaml of one node (before the profile's settings and the overrides are laid over it)."""
    return {
        "cluster_name": cluster_name,
        "num_tokens": 1,
        "initial_token": str(token),
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "data_file_directories": [str(node_dir / "data")],
        "commitlog_directory": str(node_dir / "commitlog"),
        "saved_caches_directory": str(node_dir / "saved_caches"),
        "hints_directory": str(node_dir / "hints"),
        "cdc_raw_directory": str(node_dir / "cdc_raw"),
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "commitlog_segment_size": "8MiB",
        "seed_provider": [
            {"class_name": "org.apache.cassandra.locator.SimpleSeedProvider", "parameters": [{"seeds": seeds}]}
        ],
        "listen_address": listen,
        "broadcast_address": broadcast,  # peers in other DCs reach this node through its proxy
        "rpc_address": listen,
        "storage_port": storage_port,
        "native_transport_port": native_port,
        "start_native_transport": True,
        "endpoint_snitch": "GossipingPropertyFileSnitch",
        "auto_bootstrap": False,  # a fresh cluster with no data: no streaming, nodes may join together
        "auto_snapshot": False,  # dev node: DROP/TRUNCATE need not keep snapshots
        # dev-sized pools; caches and memtables come with the profile (profile_yaml)
        "concurrent_reads": 8,
        "concurrent_writes": 8,
        "concurrent_counter_writes": 4,
        "native_transport_max_threads": 32,
        # timeouts short enough that a paused node shows up as a fast error in the lessons
        "read_request_timeout": "2000ms",
        "range_request_timeout": "4000ms",
        "write_request_timeout": "2000ms",
        "counter_write_request_timeout": "2000ms",
        "request_timeout": "4000ms",
        "materialized_views_enabled": True,
    }


def rackdc_properties(dc: str, rack: str) -> str:
    """cassandra-rackdc.properties: the node's place, and prefer_local so same-DC peers bypass the proxy."""
    return (
        f"dc={dc}\nrack={rack}\n# same-DC peers reconnect to listen_address, bypassing the latency proxy\n"
        "prefer_local=true\n"
    )


def write_conf(node_dir: Path, cfg: dict[str, Any], dc: str, rack: str) -> Path:
    """A node's directories and its conf/ (cassandra.yaml, rackdc, logback.xml); returns conf/."""
    conf = node_dir / "conf"
    for d in ("conf", "data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs", "triggers"):
        (node_dir / d).mkdir(parents=True, exist_ok=True)
    (conf / "cassandra.yaml").write_text(to_yaml(cfg))
    (conf / "cassandra-rackdc.properties").write_text(rackdc_properties(dc, rack))
    (conf / "logback.xml").write_text(LOGBACK)
    return conf


def jvm_args(
    *,
    node_dir: Path,
    conf: Path,
    jmx_port: int,
    instance_dir: Path,
    jamm: Path | None,
    profile_flags: list[str],
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The JVM flags of one node: Cassandra's own jvm options for Java 17, its start script's properties,
    the dev fast start, then the profile's flags and any extra ones (LABKIT_CASSANDRA_JVM_OPTS)."""
    return [
        # jvm-server.options, minus -XX:+AlwaysPreTouch (it would make the whole heap resident at once),
        # -XX:+HeapDumpOnOutOfMemoryError (heap dumps fill a laptop's disk) and -XX:+UseNUMA (one socket)
        "-ea",
        "-da:net.openhft...",
        "-XX:+UseThreadPriorities",
        "-Xss256k",
        "-XX:+UseTLAB",
        "-XX:+ResizeTLAB",
        "-XX:+PerfDisableSharedMem",
        "-Djava.net.preferIPv4Stack=true",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djdk.attach.allowAttachSelf=true",
        *JPMS,
        "-Dio.netty.tryReflectionSetAccessible=true",
        # cassandra.in.sh / cassandra-env.sh
        *([f"-javaagent:{jamm}"] if jamm else []),
        f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
        f"-Dcassandra-rackdc.properties=file://{conf / 'cassandra-rackdc.properties'}",
        f"-Dlogback.configurationFile=file://{conf / 'logback.xml'}",
        f"-Dcassandra.logdir={node_dir / 'logs'}",
        f"-Dcassandra.storagedir={node_dir / 'data'}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.jmx.local.port={jmx_port}",
        *FAST_START,
        "-Dcassandra.skip_schema_check=true",
        f"-Dcassandra.triggers_dir={node_dir / 'triggers'}",
        f"-Dlabkit.instance={instance_dir}",  # lets `labkit down` recognise strays by command line
        *profile_flags,
        *extra,
    ]


def to_yaml(cfg: dict[str, Any]) -> str:
    """cassandra.yaml from a dict (JSON is valid YAML flow style, so every value is written as JSON)."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items())


JPMS = [
    "--add-exports",
    "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports",
    "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports",
    "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports",
    "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports",
    "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports",
    "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens",
    "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.io=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens",
    "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.nio=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
]

# INFO to stdout, which ManagedProcess writes to the node's system.log; no debug.log (CPU and disk on a laptop)
LOGBACK = """<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.datastax.driver" level="WARN"/>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""
