"""Cassandra: real nodes and multi-datacenter clusters as local JVMs (jars from Maven Central), or containers.

    with LocalCassandra("c", nodes="us:2,eu:1", inter_dc_delay_ms=40) as c:
        ep = c.endpoint                        # ep.contact_points, ep.port, ep.local_dc == "us"
        c.node("us2").pause(); c.node("us2").resume()
        c.set_inter_dc_delay(80)

Node spec syntax (``nodes=``): comma-separated ``<dc>:<count>`` pairs, e.g. ``"dc1:1"`` (one node),
``"dc1:3"`` (one datacenter of three), ``"us:3,eu:2"`` (two datacenters). A dict ``{"us": 3, "eu": 2}``
works too. Datacenter names are letters, digits, ``_`` or ``-``; nodes are named ``<dc><i>`` (us1, us2, eu1;
``dc1_1`` when the DC name ends in a digit).

Layout of a local cluster (all on loopback; Linux routes the whole 127/8 there):

* cluster k gets the addresses 127.0.k.x, with k picked so that nothing else listens there; node n listens on
  ``127.0.k.n`` (CQL, internode) and its JMX on 127.0.0.1:<free port>. All nodes share one free CQL port and
  one free storage port, so ``Cluster(ep.contact_points, port=ep.port)`` is all a driver needs. (Where only
  127.0.0.1 is loopback, e.g. macOS without aliases, a single node runs there and clusters are refused.)
* Datacenters and racks come from GossipingPropertyFileSnitch (one cassandra-rackdc.properties per node).
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

Profiles: "light" (the default: serial GC, heap 64 MB growing to 192 MB, C1 JIT only, one small Netty arena,
tiny caches and memtables; an idle node holds ~390 MB resident, and a 3-node cluster under lesson 05's
workload ~950 MB in all, PSS: benchmarks/cassandra_memory.py measures each setting) and "full" (heap 768 MB,
G1, full JIT). Each node is one JVM started the way
Cassandra 5.0's own scripts start it on Java 17 (module exports/opens, the jamm agent,
-Dcassandra.config=file://...), with
fast dev-start settings (no wait for gossip to settle, short ring delay, one token per node, no bootstrap).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from labkit import config
from labkit.errors import (
    BadParameter,
    BinaryNotFound,
    InsufficientResources,
    NotRunning,
    ProviderUnavailable,
    ServiceFailed,
)
from labkit.services._cassandra_jars import cassandra_classpath
from labkit.services._process import (
    LOOPBACK,
    LocalService,
    ManagedProcess,
    free_port,
    port_is_free,
    reap,
    same_process,
    tail,
    tcp_open,
    wait_for,
)
from labkit.services.base import Endpoint, Health

JAVA_HINT = (
    "Java 17 not found: apt-get install openjdk-17-jre-headless (Debian/Ubuntu/Colab), "
    "conda install -c conda-forge openjdk=17 (conda, Binder), or use Docker (LABKIT_PROVIDER=docker). "
    "LABKIT_JAVA_BIN may point at a java 17 binary."
)

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
_LIGHT_MIN_HEAP_MB = 64
_SPEC_SYNTAX = (
    'nodes must look like "dc1:1" or "us:3,eu:2" (comma-separated <datacenter>:<count>, '
    "datacenter names of letters, digits, _ or -, 1-9 nodes each)"
)
_PROXY_OFFSET = 100
_JAVA_GLOBS = [
    "/usr/lib/jvm/*17*/bin/java",
    "/opt/conda/bin/java",
    "/srv/conda/envs/notebook/bin/java",
    "/usr/local/opt/openjdk@17/bin/java",
    "/opt/homebrew/opt/openjdk@17/bin/java",
]
_DC_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


# ---------------------------------------------------------------------------------------------------------------
def parse_nodes(spec: str | dict[str, int]) -> dict[str, int]:
    """``"us:3,eu:2"`` -> ``{"us": 3, "eu": 2}`` (order kept: the first DC is the endpoint's local_dc)."""
    if isinstance(spec, dict):
        items = [(str(k), v) for k, v in spec.items()]
    elif isinstance(spec, str) and spec.strip():
        items = []
        for part in spec.split(","):
            dc, sep, count = part.strip().partition(":")
            if not sep:
                raise BadParameter(f"{_SPEC_SYNTAX}; got {spec!r}")
            items.append((dc.strip(), count.strip()))
    else:
        raise BadParameter(f"{_SPEC_SYNTAX}; got {spec!r}")
    out: dict[str, int] = {}
    for dc, count in items:
        try:
            n = int(count)
        except (TypeError, ValueError):
            raise BadParameter(f"{_SPEC_SYNTAX}; {count!r} is not a node count in {spec!r}") from None
        if not _DC_RE.fullmatch(dc) or not 1 <= n <= 9 or dc in out:
            raise BadParameter(f"{_SPEC_SYNTAX}; got {spec!r}")
        out[dc] = n
    if not out:
        raise BadParameter(f"{_SPEC_SYNTAX}; got {spec!r}")
    return out


def format_nodes(nodes: dict[str, int]) -> str:
    return ",".join(f"{dc}:{n}" for dc, n in nodes.items())


def java_major(java: Path) -> int | None:
    try:
        r = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', r.stderr + r.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def find_java() -> Path:
    """A Java 17 runtime: LABKIT_JAVA_BIN, else JAVA_HOME, PATH and the usual JVM directories."""
    env = config.current().java_bin
    candidates: list[Path] = []
    if env:
        candidates = [Path(env)]
        if not (candidates[0].is_file() and os.access(candidates[0], os.X_OK)):
            raise BinaryNotFound(
                f"LABKIT_JAVA_BIN={env} is not an executable file: fix the path or unset it. " + JAVA_HINT
            )
    else:
        if os.environ.get("JAVA_HOME"):
            candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
        on_path = shutil.which("java")
        if on_path:
            candidates.append(Path(on_path))
        for pattern in _JAVA_GLOBS:
            candidates.extend(sorted(Path("/").glob(pattern.lstrip("/"))))
    seen: list[str] = []
    for c in candidates:
        if not (c.is_file() and os.access(c, os.X_OK)):
            continue
        major = java_major(c)
        if major == 17:
            return c
        seen.append(f"{c} is Java {major if major is not None else '(unknown version)'}")
    if seen:
        raise BinaryNotFound("Cassandra 5.0 needs Java 17, but " + "; ".join(seen) + ". " + JAVA_HINT)
    raise BinaryNotFound(JAVA_HINT)


def check_memory(count: int, footprint_mb: int) -> None:
    """Refuse before starting anything when the nodes cannot fit in the memory available now."""
    avail_mb = psutil.virtual_memory().available // (1024 * 1024)
    need = count * footprint_mb
    if need > avail_mb:
        raise InsufficientResources(
            f"{count} Cassandra node(s) need about {need} MB ({footprint_mb} MB each) but only {avail_mb} MB "
            'of memory is available: ask for fewer nodes (e.g. nodes="us:1,eu:1"), use profile="light", '
            "or stop other servers (`labkit down`)."
        )


def _log_tail(path: Path, lines: int = 25) -> str:
    """The end of a node's log without Java stack frames, so the error itself stays in view."""
    kept = [ln for ln in tail(path, 400).splitlines() if not ln.lstrip().startswith(("at ", "... "))]
    return "\n".join(kept[-lines:])


def _can_bind(address: str) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
            return True
        except OSError:
            return False


def _initial_token(dc_index: int, i: int, count: int) -> int:
    """Evenly spaced Murmur3 tokens per DC, offset per DC so no two nodes share one (no random collisions)."""
    return -(2**63) + i * (2**64 // count) + dc_index * 1000


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CassandraNode:
    """One node of a local cluster: its own JVM, directories, log and addresses. Faults act on this JVM only."""

    name: str
    dc: str
    rack: str
    address: str
    proxy_address: str
    jmx_port: int
    token: int
    dir: Path
    cluster: LocalCassandra = field(repr=False)
    proc: ManagedProcess | None = field(default=None, repr=False)
    ref: dict[str, float] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "system.log"

    @property
    def native_port(self) -> int:
        return self.cluster.native_port

    def logs(self, lines: int = 50) -> str:
        return tail(self.log_path, lines)

    def process(self) -> psutil.Process | None:
        return same_process(self.ref) if self.ref else None

    def alive(self) -> bool:
        if self.proc is not None and self.proc.popen.poll() is not None:
            return False
        return self.process() is not None

    def kill(self) -> None:
        """SIGKILL this node's JVM (a crash)."""
        p = self.process()
        if p is not None:
            try:
                p.kill()
                p.wait(10)
            except psutil.Error:
                pass
        if self.proc is not None:
            self.proc.popen.poll()

    def pause(self) -> None:
        """SIGSTOP: the node keeps its sockets but answers nothing (a GC pause or a hung machine)."""
        p = self.process()
        if p is None:
            raise NotRunning(f"node {self.name} is not running: start it with node('{self.name}').start()")
        p.suspend()

    def resume(self) -> None:
        p = self.process()
        if p is not None:
            p.resume()

    def start(self, timeout: float = 120.0) -> None:
        """(Re)start this node's JVM, e.g. after kill(); its data is kept. Waits until it serves CQL."""
        if self.alive():
            return
        self.cluster._launch(self)
        self.cluster._wait_node(self, timeout)
        self.cluster._save_layout()

    def stop(self) -> None:
        if self.ref:
            reap([self.ref], grace=20.0)
        if self.proc is not None:
            self.proc.popen.poll()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dc": self.dc,
            "rack": self.rack,
            "address": self.address,
            "proxy_address": self.proxy_address,
            "jmx_port": self.jmx_port,
            "token": self.token,
            "dir": str(self.dir),
            "ref": self.ref,
        }


class LocalCassandra(LocalService):
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
        self.datacenters = parse_nodes(nodes)
        if profile not in PROFILES:
            raise BadParameter(f"profile={profile!r}: use one of {', '.join(PROFILES)}")
        self.profile = profile
        if heap_mb is not None and not 128 <= int(heap_mb) <= 32768:
            raise BadParameter(
                f"heap_mb={heap_mb}: use 128-32768 MB (or leave it out for the profile's "
                f"{PROFILES[profile]['heap_mb']} MB)"
            )
        self.heap_mb = int(heap_mb) if heap_mb is not None else PROFILES[profile]["heap_mb"]
        if inter_dc_delay_ms < 0 or jitter_ms < 0:
            raise BadParameter("inter_dc_delay_ms and jitter_ms must be >= 0 (milliseconds, one way)")
        self.inter_dc_delay_ms = float(inter_dc_delay_ms)
        self.jitter_ms = float(jitter_ms)
        self.yaml_overrides = dict(yaml_overrides or {})
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

    def set_inter_dc_delay(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Change the one-way inter-DC delay while the cluster runs (a cross-DC round trip costs 2x this)."""
        from labkit.services.latency_proxy import write_config

        if delay_ms < 0 or jitter_ms < 0:
            raise BadParameter("delay_ms and jitter_ms must be >= 0 (milliseconds, one way)")
        self.inter_dc_delay_ms, self.jitter_ms = float(delay_ms), float(jitter_ms)
        if self.nodes and not self.multi_dc and delay_ms:
            raise BadParameter(
                f"cassandra '{self.name}' has one datacenter, so there is no inter-DC link to slow "
                'down: start it with two, e.g. nodes="us:1,eu:1"'
            )
        if self.nodes and self.multi_dc:
            write_config(self._proxy_config, self._proxy_routes())
            self._save_layout()
            time.sleep(0.15)  # the proxy polls its config every 50 ms

    def partition(self) -> None:
        """Cut every inter-DC link (the latency proxy resets and refuses them); same-DC traffic goes on."""
        self._set_partitioned(True)

    def heal(self) -> None:
        """End partition(): inter-DC connections are accepted again; Cassandra reconnects by itself."""
        self._set_partitioned(False)

    def _set_partitioned(self, on: bool) -> None:
        from labkit.services.latency_proxy import wait_applied, write_config

        if not (self.nodes and self.multi_dc):
            raise BadParameter(
                f"cassandra '{self.name}' has no running inter-DC link to cut: start it with two "
                'datacenters, e.g. nodes="us:1,eu:1"'
            )
        self.partitioned = on
        write_config(self._proxy_config, self._proxy_routes())
        wait_applied(self._proxy_config)

    def link_bytes(self) -> dict[str, int]:
        """Bytes that crossed the inter-DC link so far, by destination datacenter (``"to_eu"``) and ``"total"``.

        Every inter-DC message crosses exactly one proxy route, the one in front of the receiving node
        ("up" bytes); "down" bytes go back to the sender's DC on the same connection (handshakes).
        """
        from labkit.services.latency_proxy import read_stats

        if not (self.nodes and self.multi_dc):
            raise BadParameter(f"cassandra '{self.name}' has one datacenter: no inter-DC link to count")
        stats = read_stats(self._proxy_config)
        out = {f"to_{dc}": 0 for dc in self.datacenters}
        total = 0
        for n in self.nodes:
            st = stats.get(f"{n.proxy_address}:{self.storage_port}", {"up": 0, "down": 0})
            out[f"to_{n.dc}"] += st["up"]
            total += st["up"] + st["down"]
            if len(self.datacenters) == 2:  # replies on that connection go back to the one other DC
                other = next(dc for dc in self.datacenters if dc != n.dc)
                out[f"to_{other}"] += st["down"]
        out["total"] = total
        return out

    # -- start ----------------------------------------------------------------------------------------------------
    @property
    def _proxy_config(self) -> Path:
        return self.dir / "proxy" / "routes.json"

    def _proxy_routes(self) -> list[dict[str, Any]]:
        return [
            {
                "listen": [n.proxy_address, self.storage_port],
                "target": [n.address, self.storage_port],
                "delay_ms": self.inter_dc_delay_ms,
                "jitter_ms": self.jitter_ms,
                "blocked": getattr(self, "partitioned", False),
            }
            for n in self.nodes
        ]

    def _plan(self) -> None:
        """Pick a free 127.0.k.0/24 and ports, and name the nodes."""
        count = sum(self.datacenters.values())
        try:
            busy = {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.laddr}
        except (psutil.Error, PermissionError):
            busy = set()
        if not _can_bind("127.0.254.1"):
            # macOS and others route only 127.0.0.1 unless aliases are added: one node still works there
            if count > 1:
                raise ProviderUnavailable(
                    f"this system routes only 127.0.0.1 to loopback, and a {count}-node cluster needs one address "
                    "per node (127.0.k.n, plus 127.0.k.(100+n) for the latency proxies). Add aliases (macOS: "
                    "`sudo ifconfig lo0 alias 127.0.10.1` ... for each), or use Docker (LABKIT_PROVIDER=docker), "
                    'or one node (nodes="dc1:1").'
                )
            addrs, proxies = [LOOPBACK], [LOOPBACK]
            native, storage = free_port(LOOPBACK), free_port(LOOPBACK)
        else:
            subnets = list(range(10, 250))
            random.shuffle(subnets)
            for k in subnets:
                addrs = [f"127.0.{k}.{i}" for i in range(1, count + 1)]
                proxies = [f"127.0.{k}.{_PROXY_OFFSET + i}" for i in range(1, count + 1)]
                if busy & set(addrs + proxies):
                    continue
                native, storage = free_port(addrs[0]), free_port(addrs[0])
                if native == storage or not all(
                    port_is_free(native, a) and port_is_free(storage, a) for a in addrs + proxies
                ):
                    continue
                break
            else:
                raise ServiceFailed(
                    "no free 127.0.k.0/24 loopback range for a Cassandra cluster: stop other clusters (`labkit down`)"
                )
        self.native_port, self.storage_port = native, storage
        self.nodes = []
        i = 0
        for dc_index, (dc, n) in enumerate(self.datacenters.items()):
            for j in range(n):
                name = f"{dc}_{j + 1}" if dc[-1].isdigit() else f"{dc}{j + 1}"  # us1, eu2, dc1_1
                self.nodes.append(
                    CassandraNode(
                        name=name,
                        dc=dc,
                        rack="rack1",
                        address=addrs[i],
                        proxy_address=proxies[i],
                        jmx_port=free_port(LOOPBACK),
                        token=_initial_token(dc_index, j, n),
                        dir=self.dir / name,
                        cluster=self,
                    )
                )
                i += 1

    def seeds(self) -> list[CassandraNode]:
        """The first node of each datacenter."""
        first: dict[str, CassandraNode] = {}
        for n in self.nodes:
            first.setdefault(n.dc, n)
        return list(first.values())

    def start(self, timeout: float | None = None) -> Endpoint:
        """Start the cluster (seeds first, then the rest together) and wait until every node serves CQL.

        After kill() or stop() it starts only what is not running, on the same data and addresses.
        """
        if self.nodes and all(n.alive() for n in self.nodes) and (self._proxy_alive() or not self.multi_dc):
            return self.endpoint
        self.java = find_java()
        self.classpath = cassandra_classpath()
        if not self.nodes:
            self._plan()
        dead = [n for n in self.nodes if not n.alive()]
        footprint = PROFILES[self.profile]["footprint_mb"] * self.heap_mb // PROFILES[self.profile]["heap_mb"]
        check_memory(len(dead), footprint)
        timeout = timeout if timeout is not None else 60.0 + 45.0 * len(dead)
        deadline = time.monotonic() + timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.multi_dc and not self._proxy_alive():
                from labkit.services.latency_proxy import start_proxy_process

                self.proxy = start_proxy_process(self._proxy_config, self._proxy_routes())
                self.proxy_ref = self.proxy.ref
                self.procs = [self.proxy]
            self._save_layout()
            # One seed first (nobody to gossip with yet), then all the rest at once: with auto_bootstrap off and
            # fixed tokens, nodes may join together, and the JVM start-ups overlap on the cores.
            first = [n for n in self.seeds()[:1] if n in dead]
            rest = [n for n in dead if n not in first]
            for group in (first, rest):
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

    @property
    def multi_dc(self) -> bool:
        """Only clusters with several datacenters get latency proxies (one DC has no inter-DC link)."""
        return len(self.datacenters) > 1

    def _proxy_alive(self) -> bool:
        return self.proxy_ref is not None and same_process(self.proxy_ref) is not None

    def _make_endpoint(self) -> Endpoint:
        dcs: dict[str, list[str]] = {}
        for n in self.nodes:
            dcs.setdefault(n.dc, []).append(n.address)
        first = self.nodes[0]
        return Endpoint(
            kind=self.kind,
            name=self.name,
            provider=self.provider,
            host=first.address,
            port=self.native_port,
            extra={
                "contact_points": [n.address for n in self.nodes],
                "local_dc": first.dc,
                "datacenters": dcs,
                "port": self.native_port,
                "nodes": [
                    {"name": n.name, "dc": n.dc, "address": n.address, "native_port": self.native_port}
                    for n in self.nodes
                ],
            },
        )

    def _broadcast(self, n: CassandraNode) -> str:
        return n.proxy_address if self.multi_dc else n.address

    def _write_config(self, n: CassandraNode) -> Path:
        conf = n.dir / "conf"
        for d in ("conf", "data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs", "triggers"):
            (n.dir / d).mkdir(parents=True, exist_ok=True)
        seeds = ",".join(f"{self._broadcast(s)}:{self.storage_port}" for s in self.seeds())
        cfg: dict[str, Any] = {
            "cluster_name": f"labkit-{self.name}",
            "num_tokens": 1,
            "initial_token": str(n.token),
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "data_file_directories": [str(n.dir / "data")],
            "commitlog_directory": str(n.dir / "commitlog"),
            "saved_caches_directory": str(n.dir / "saved_caches"),
            "hints_directory": str(n.dir / "hints"),
            "cdc_raw_directory": str(n.dir / "cdc_raw"),
            "commitlog_sync": "periodic",
            "commitlog_sync_period": "10000ms",
            "commitlog_segment_size": "8MiB",
            "seed_provider": [
                {"class_name": "org.apache.cassandra.locator.SimpleSeedProvider", "parameters": [{"seeds": seeds}]}
            ],
            "listen_address": n.address,
            "broadcast_address": self._broadcast(n),  # peers in other DCs reach this node through its proxy
            "rpc_address": n.address,
            "storage_port": self.storage_port,
            "native_transport_port": self.native_port,
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
        cfg.update(self.profile_yaml())
        cfg.update(self.yaml_overrides)
        (conf / "cassandra.yaml").write_text(_to_yaml(cfg))
        (conf / "cassandra-rackdc.properties").write_text(
            f"dc={n.dc}\nrack={n.rack}\n# same-DC peers reconnect to listen_address, bypassing the latency proxy\n"
            "prefer_local=true\n"
        )
        (conf / "logback.xml").write_text(_LOGBACK)
        return conf

    def _jvm_args(self, n: CassandraNode, conf: Path) -> list[str]:
        jamm = next((p for p in self.classpath if p.name.startswith("jamm-")), None)
        args = [
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
            *_JPMS,
            "-Dio.netty.tryReflectionSetAccessible=true",
            # cassandra.in.sh / cassandra-env.sh
            *([f"-javaagent:{jamm}"] if jamm else []),
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
            f"-Dcassandra-rackdc.properties=file://{conf / 'cassandra-rackdc.properties'}",
            f"-Dlogback.configurationFile=file://{conf / 'logback.xml'}",
            f"-Dcassandra.logdir={n.dir / 'logs'}",
            f"-Dcassandra.storagedir={n.dir / 'data'}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.jmx.local.port={n.jmx_port}",
            # fast start for a dev cluster on one machine
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.consistent.rangemovement=false",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.skip_schema_check=true",
            f"-Dcassandra.triggers_dir={n.dir / 'triggers'}",
            f"-Dlabkit.instance={self.dir}",  # lets `labkit down` recognise strays by command line
        ]
        args += self.profile_jvm()
        # extra flags for experiments, e.g. LABKIT_CASSANDRA_JVM_OPTS="-XX:NativeMemoryTracking=summary"
        args += list(config.current().cassandra_jvm_opts)
        return args

    def profile_jvm(self) -> list[str]:
        """The profile's heap, collector, JIT and Netty flags (LIGHT_JVM or FULL_JVM) for this cluster's heap."""
        flags = LIGHT_JVM if self.profile == "light" else FULL_JVM
        low = min(self.heap_mb, _LIGHT_MIN_HEAP_MB)
        return [f.format(heap=self.heap_mb, min_heap=low) for f in flags]

    def profile_yaml(self) -> dict[str, Any]:
        """The profile's caches and memtable sizes (LIGHT_YAML or FULL_YAML); yaml_overrides still win."""
        return dict(LIGHT_YAML if self.profile == "light" else FULL_YAML)

    def _launch(self, n: CassandraNode) -> None:
        if not hasattr(self, "java"):
            self.java = find_java()
            self.classpath = cassandra_classpath()
        conf = self._write_config(n)
        lib = self.classpath[0].parent
        argv = [
            str(self.java),
            *self._jvm_args(n, conf),
            "-cp",
            f"{conf}:{lib}/*",
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
            return bool(_query_one(n.address, self.native_port, "SELECT release_version FROM system.local"))

        wait_for(
            f"Cassandra node {n.name} ({n.address}:{self.native_port}) to answer CQL",
            ready,
            timeout,
            alive=n.alive,
            on_fail=lambda: f"--- last lines of {n.log_path} ---\n" + _log_tail(n.log_path),
            interval=0.5,
        )

    def _wait_converged(self, timeout: float) -> None:
        """Every node lists every other as a live peer (schema changes then reach everyone)."""
        if len(self.nodes) == 1:
            return
        want = {self._broadcast(m) for m in self.nodes}

        def converged() -> bool:
            for n in self.nodes:
                rows = _query_one(n.address, self.native_port, "SELECT peer FROM system.peers_v2")
                if {str(r[0]) for r in rows} | {self._broadcast(n)} != want:
                    return False
            return True

        wait_for(
            f"Cassandra cluster '{self.name}' to see all {len(self.nodes)} nodes",
            converged,
            timeout,
            on_fail=lambda: "\n".join(f"--- {n.name} ---\n{tail(n.log_path, 8)}" for n in self.nodes),
            interval=0.5,
        )

    def wait_for_schema_agreement(self, timeout: float = 60.0) -> str:
        """Wait until every running node reports the same schema version (after CREATE/ALTER); return it."""

        def agreed() -> str | None:
            versions = {
                str(_query_one(n.address, self.native_port, "SELECT schema_version FROM system.local")[0][0])
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
                return str(_query_one(n.address, self.native_port, "SELECT release_version FROM system.local")[0][0])
            except Exception as e:  # noqa: BLE001 - try the next node
                last = e
        raise NotRunning(f"no node of cassandra '{self.name}' answers CQL ({last}): start() it")


def _query_one(address: str, port: int, cql: str, timeout: float = 5.0) -> list[Any]:
    """Run one query on exactly one node (a short-lived driver session pinned to it)."""
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


def _to_yaml(cfg: dict[str, Any]) -> str:
    """cassandra.yaml from a dict (JSON is valid YAML flow style, so every value is written as JSON)."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items())


_JPMS = [
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
_LOGBACK = """<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.datastax.driver" level="WARN"/>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


LOCAL = LocalCassandra


def __getattr__(name: str) -> Any:
    """The docker provider lives in its own module, which needs the helpers above: imported on first use."""
    if name in ("DOCKER", "DockerCassandra"):
        from labkit.services._cassandra_docker import DockerCassandra

        return DockerCassandra
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
