"""Cassandra clusters of local JVMs (jars from Maven Central): the local provider's cluster orchestration.

Layout of a local cluster (all on loopback; Linux routes the whole 127/8 there):

* cluster k gets the addresses 127.0.k.x, with k picked so that nothing else listens there; node n listens on
  ``127.0.k.n`` (CQL, internode) and its JMX on 127.0.0.1:<free port>. All nodes share one free CQL port and
  one free storage port, so ``Cluster(ep.contact_points, port=ep.port)`` is all a driver needs. (Where only
  127.0.0.1 is loopback, e.g. macOS without aliases, a single node runs there and clusters are refused.)
* Names, datacenters, racks, tokens, seeds and the start order come from the shared plan (plan.py); each
  node's files and flags from flags.py.
* Inter-DC latency (clusters of two or more DCs): every node's ``broadcast_address`` is ``127.0.k.(100+n)``,
  where one latency proxy process (labkit.services.latency_proxy, one route per node) forwards to the node's
  storage port. With ``prefer_local=true``, peers in the same DC learn the node's private ``listen_address``
  from gossip and reconnect to it, bypassing the proxy; peers in another DC keep the broadcast address, so
  each inter-DC message crosses exactly one proxy (Cassandra's internode connections are one-way: replies
  travel on the replier's own outbound connection). A cross-DC round trip thus costs 2 * inter_dc_delay_ms.
  Clients connect straight to the nodes (rpc_address), never through a proxy. Verified by measurement
  (tests/test_cassandra.py): at 60 ms one-way, an eu-coordinated QUORUM read (needs a us replica) takes
  ~128 ms against ~2 ms for LOCAL_QUORUM, while a us LOCAL_QUORUM read, which needs both us replicas, stays at
  a few ms (it would cost >= 120 ms if intra-DC traffic crossed the proxy).
  ``set_inter_dc_delay(ms)`` changes the delay while the cluster runs, also from another process.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from labkit import config
from labkit.errors import BadParameter, NotRunning
from labkit.services._process import (
    LOOPBACK,
    LocalService,
    ManagedProcess,
    free_port,
    reap,
    tail,
    tcp_open,
    wait_for,
)
from labkit.services.base import Endpoint, Health
from labkit.services.cassandra import cds, flags
from labkit.services.cassandra.driver import peers_converged, query_one, release_version
from labkit.services.cassandra.jars import cassandra_classpath
from labkit.services.cassandra.java import check_memory, find_java
from labkit.services.cassandra.network import InterDcLinks, pick_loopback
from labkit.services.cassandra.node import CassandraNode, log_tail
from labkit.services.cassandra.plan import ClusterPlan, cluster_endpoint, format_nodes


class LocalCassandra(InterDcLinks, LocalService):
    """A Cassandra 5.0 cluster of local JVMs (one node by default). See the module docstring for the layout."""

    kind = "cassandra"

    def __init__(
        self,
        name: str = "cassandra",
        *,
        nodes: str | dict[str, int] = "dc1:1",
        profile: str = "light",
        heap_mb: int | None = None,
        instance_dir: Path | None = None,
        inter_dc_delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        yaml_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, instance_dir=instance_dir)
        self.plan = ClusterPlan.of(nodes)
        self.datacenters = self.plan.datacenters
        if profile not in flags.PROFILES:
            raise BadParameter(f"profile={profile!r}: use one of {', '.join(flags.PROFILES)}")
        self.profile = profile
        if heap_mb is not None and not 128 <= int(heap_mb) <= 32768:
            raise BadParameter(
                f"heap_mb={heap_mb}: use 128-32768 MB (or leave it out for the profile's "
                f"{flags.PROFILES[profile]['heap_mb']} MB)"
            )
        self.heap_mb = int(heap_mb) if heap_mb is not None else flags.PROFILES[profile]["heap_mb"]
        if inter_dc_delay_ms < 0 or jitter_ms < 0:
            raise BadParameter("inter_dc_delay_ms and jitter_ms must be >= 0 (milliseconds, one way)")
        self.inter_dc_delay_ms = float(inter_dc_delay_ms)
        self.jitter_ms = float(jitter_ms)
        self.yaml_overrides = dict(yaml_overrides or {})
        self.extra_jvm: list[str] = []  # more JVM flags for this cluster's nodes (the CDS training run's)
        self.nodes: list[CassandraNode] = []
        self.native_port = 0
        self.storage_port = 0
        self.proxy: ManagedProcess | None = None
        self.proxy_ref: dict[str, float] | None = None
        self.partitioned = False  # partition(): the latency proxy forwards nothing between datacenters

    # -- records ------------------------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        return {
            "nodes": format_nodes(self.datacenters),
            "profile": self.profile,
            "heap_mb": self.heap_mb,
            "inter_dc_delay_ms": self.inter_dc_delay_ms,
            "jitter_ms": self.jitter_ms,
            "yaml_overrides": self.yaml_overrides,
        }

    def pids(self) -> list[dict[str, float]]:
        refs = [n.ref for n in self.nodes if n.ref] + ([self.proxy_ref] if self.proxy_ref else [])
        return refs + [r for r in self._restored_refs if r not in refs]

    def to_record(self) -> dict[str, Any]:
        rec = super().to_record()
        rec["layout"] = self._layout()
        return rec

    def _layout(self) -> dict[str, Any]:
        return {
            "native_port": self.native_port,
            "storage_port": self.storage_port,
            "proxy_ref": self.proxy_ref,
            "inter_dc_delay_ms": self.inter_dc_delay_ms,
            "jitter_ms": self.jitter_ms,
            "nodes": [n.to_dict() for n in self.nodes],
        }

    def _save_layout(self) -> None:
        tmp = self.dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(self._layout(), indent=1))
        os.replace(tmp, self.dir / "cluster.json")

    def _adopt(self, record: dict[str, Any]) -> None:
        """Take over a running cluster from a stack record (another process started it)."""
        super()._adopt(record)
        layout = record.get("layout")
        if layout is None and (self.dir / "cluster.json").is_file():
            layout = json.loads((self.dir / "cluster.json").read_text())
        if layout:
            self._restore_layout(layout)

    def _restore_layout(self, layout: dict[str, Any]) -> None:
        self.native_port, self.storage_port = layout["native_port"], layout["storage_port"]
        self.proxy_ref = layout.get("proxy_ref")
        self.inter_dc_delay_ms = layout.get("inter_dc_delay_ms", self.inter_dc_delay_ms)
        self.jitter_ms = layout.get("jitter_ms", self.jitter_ms)
        self.nodes = [
            CassandraNode(
                name=d["name"],
                dc=d["dc"],
                rack=d["rack"],
                address=d["address"],
                proxy_address=d["proxy_address"],
                jmx_port=d["jmx_port"],
                token=d["token"],
                dir=Path(d["dir"]),
                cluster=self,
                ref=d.get("ref"),
            )
            for d in layout["nodes"]
        ]

    # -- nodes ----------------------------------------------------------------------------------------------------
    def node(self, which: int | str) -> CassandraNode:
        """A node by index (0-based, in spec order) or by name ("us2")."""
        if not self.nodes:
            raise NotRunning(f"cassandra '{self.name}' is not started: call start() first")
        if isinstance(which, int):
            if not 0 <= which < len(self.nodes):
                raise BadParameter(f"node index {which}: this cluster has nodes 0..{len(self.nodes) - 1}")
            return self.nodes[which]
        for n in self.nodes:
            if n.name == which:
                return n
        raise BadParameter(f"no node named {which!r}: nodes are {', '.join(n.name for n in self.nodes)}")

    def kill_node(self, which: int | str) -> None:
        self.node(which).kill()

    def pause_node(self, which: int | str) -> None:
        self.node(which).pause()

    def resume_node(self, which: int | str) -> None:
        self.node(which).resume()

    def kill(self) -> None:
        """SIGKILL every node (the latency proxy stays: it is the network, not the database)."""
        for n in self.nodes:
            n.kill()

    def pause(self) -> None:
        for n in self.nodes:
            if n.alive():
                n.pause()

    def resume(self) -> None:
        for n in self.nodes:
            n.resume()

    def _place(self) -> None:
        """The plan's nodes on a free 127.0.k.0/24 with free ports (network.pick_loopback)."""
        addrs, proxies, native, storage = pick_loopback(self.plan.size)
        self.native_port, self.storage_port = native, storage
        self.nodes = [
            CassandraNode(
                name=p.name,
                dc=p.dc,
                rack=p.rack,
                address=addrs[p.index],
                proxy_address=proxies[p.index],
                jmx_port=free_port(LOOPBACK),
                token=p.token,
                dir=self.dir / p.name,
                cluster=self,
            )
            for p in self.plan.nodes
        ]

    def seeds(self) -> list[CassandraNode]:
        """The first node of each datacenter (the plan's seeds)."""
        return [self.node(p.name) for p in self.plan.seeds()]

    def start(self, timeout: float | None = None) -> Endpoint:
        """Start the cluster (seeds first, then the rest together) and wait until every node serves CQL.

        After kill() or stop() it starts only what is not running, on the same data and addresses.
        """
        if self.nodes and all(n.alive() for n in self.nodes) and (self._proxy_alive() or not self.multi_dc):
            return self.endpoint
        self.java = find_java()
        self.classpath = cassandra_classpath()
        if not self.nodes:
            self._place()
        dead = [n for n in self.nodes if not n.alive()]
        prof = flags.PROFILES[self.profile]
        footprint = prof["footprint_mb"] * self.heap_mb // prof["heap_mb"]
        check_memory(len(dead), footprint)
        timeout = timeout if timeout is not None else 60.0 + 45.0 * len(dead)
        deadline = time.monotonic() + timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.multi_dc and not self._proxy_alive():
                self.procs = [self._start_proxy()]
            self._save_layout()
            # the plan's order: one seed first (nobody to gossip with yet), then all the rest at once
            for names in self.plan.start_groups([n.name for n in dead]):
                group = [self.node(nm) for nm in names]
                for n in group:
                    self._launch(n)
                self._save_layout()
                for n in group:
                    self._wait_node(n, max(5.0, deadline - time.monotonic()))
            self._endpoint = self._make_endpoint()
            self._wait_converged(max(5.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self._endpoint

    def _make_endpoint(self) -> Endpoint:
        port = self.native_port
        nodes = [{"name": n.name, "dc": n.dc, "address": n.address, "native_port": port} for n in self.nodes]
        return cluster_endpoint(self.kind, self.name, self.provider, nodes)

    def _write_config(self, n: CassandraNode) -> Path:
        """The node's directories and conf/ (flags.node_yaml + the profile's settings + yaml_overrides)."""
        seeds = ",".join(f"{self._broadcast(s)}:{self.storage_port}" for s in self.seeds())
        cfg = flags.node_yaml(
            cluster_name=self.plan.cluster_name(self.name),
            node_dir=n.dir,
            token=n.token,
            seeds=seeds,
            listen=n.address,
            broadcast=self._broadcast(n),
            storage_port=self.storage_port,
            native_port=self.native_port,
        )
        cfg.update(self.profile_yaml())
        cfg.update(self.yaml_overrides)
        return flags.write_conf(n.dir, cfg, n.dc, n.rack)

    def _jvm_args(self, n: CassandraNode, conf: Path) -> list[str]:
        return flags.jvm_args(
            node_dir=n.dir,
            conf=conf,
            jmx_port=n.jmx_port,
            instance_dir=self.dir,
            jamm=next((p for p in self.classpath if p.name.startswith("jamm-")), None),
            profile_flags=self.profile_jvm(),
            # extra flags for experiments, e.g. LABKIT_CASSANDRA_JVM_OPTS="-XX:NativeMemoryTracking=summary"
            extra=[*self.extra_jvm, *config.current().cassandra_jvm_opts],
        )

    def profile_jvm(self) -> list[str]:
        """The profile's heap, collector, JIT and Netty flags (LIGHT_JVM or FULL_JVM) for this cluster's heap."""
        return flags.profile_jvm(self.profile, self.heap_mb)

    def profile_yaml(self) -> dict[str, Any]:
        """The profile's caches and memtable sizes (LIGHT_YAML or FULL_YAML); yaml_overrides still win."""
        return flags.profile_yaml(self.profile)

    def _launch(self, n: CassandraNode) -> None:
        if not hasattr(self, "java"):
            self.java = find_java()
            self.classpath = cassandra_classpath()
        conf = self._write_config(n)
        lib = self.classpath[0].parent
        argv = [
            str(self.java),
            *self._jvm_args(n, conf),
            *cds.jvm_flags(self.java, self.classpath),  # the class-data sharing archive, once built (cds.py)
            "-cp",
            # the jars first, so the archive's classpath (the jars alone) is a prefix of the node's; Cassandra
            # reads its conf/ files through the -D URLs above
            f"{lib}/*:{conf}",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS"))}
        env.setdefault("MALLOC_ARENA_MAX", "2")  # glibc's per-thread arenas otherwise add 100+ MB resident
        n.proc = ManagedProcess(argv, n.log_path, cwd=n.dir, env=env)
        n.ref = n.proc.ref
        self.procs = [p for p in self.procs if p.alive()] + [n.proc]

    def _wait_node(self, n: CassandraNode, timeout: float) -> None:
        def ready() -> bool:
            if not tcp_open(n.address, self.native_port):
                return False
            return bool(release_version(n.address, self.native_port))

        wait_for(
            f"Cassandra node {n.name} ({n.address}:{self.native_port}) to answer CQL",
            ready,
            timeout,
            alive=n.alive,
            on_fail=lambda: f"--- last lines of {n.log_path} ---\n" + log_tail(n.log_path),
            interval=0.1,  # polls from 0.1 s, growing to wait_for's 0.25 s (a refused connection costs nothing)
        )

    def _wait_converged(self, timeout: float) -> None:
        """Every node lists every other as a live peer (schema changes then reach everyone)."""
        if len(self.nodes) == 1:
            return
        view = [(n.address, self.native_port, self._broadcast(n)) for n in self.nodes]
        wait_for(
            f"Cassandra cluster '{self.name}' to see all {len(self.nodes)} nodes",
            lambda: peers_converged(view),
            timeout,
            on_fail=lambda: "\n".join(f"--- {n.name} ---\n{tail(n.log_path, 8)}" for n in self.nodes),
            interval=0.2,
        )

    def wait_for_schema_agreement(self, timeout: float = 60.0) -> str:
        """Wait until every running node reports the same schema version (after CREATE/ALTER); return it."""

        def agreed() -> str | None:
            versions = {
                str(query_one(n.address, self.native_port, "SELECT schema_version FROM system.local")[0][0])
                for n in self.nodes
                if n.alive()
            }
            return versions.pop() if len(versions) == 1 else None

        return wait_for(f"the nodes of cassandra '{self.name}' to agree on the schema", agreed, timeout, interval=0.3)

    # -- stop, health -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        refs = self.pids()
        if refs:
            reap(refs, grace=20.0)
        for n in self.nodes:
            if n.proc is not None:
                n.proc.popen.poll()
            n.ref = None
        if self.proxy is not None:
            self.proxy.popen.poll()
        self.proxy, self.proxy_ref = None, None
        self.procs.clear()
        self._restored_refs.clear()
        if self.nodes and self.dir.is_dir():
            self._save_layout()

    def logs(self, lines: int = 50) -> str:
        return "\n".join(f"--- {n.name} ({n.log_path}) ---\n{n.logs(lines)}" for n in self.nodes)

    @property
    def log_path(self) -> Path:
        return self.nodes[0].log_path if self.nodes else self.dir / "server.log"

    def health(self) -> Health:
        if not self.nodes:
            return Health(False, "not started")
        down = [n.name for n in self.nodes if not n.alive()]
        try:
            v = self.version()
        except Exception as e:  # noqa: BLE001 - any failure is "not healthy", with the reason
            return Health(False, f"no CQL answer: {e}")
        if down:
            return Health(False, f"answers CQL ({v}) but node(s) {', '.join(down)} are not running")
        return Health(True, f"{len(self.nodes)} node(s) answer CQL (Cassandra {v})")

    def version(self) -> str:
        last: Exception | None = None
        for n in self.nodes or []:
            if not n.alive():
                continue
            try:
                return release_version(n.address, self.native_port)
            except Exception as e:  # noqa: BLE001 - try the next node
                last = e
        raise NotRunning(f"no node of cassandra '{self.name}' answers CQL ({last}): start() it")
