"""Cassandra in containers (the docker provider): one node, a cluster, or several datacenters with inter-DC delay.

The containers follow the official cassandra image's contract only (CASSANDRA_CLUSTER_NAME, _DC, _RACK, _SEEDS,
_ENDPOINT_SNITCH, _LISTEN_ADDRESS, _BROADCAST_ADDRESS, _BROADCAST_RPC_ADDRESS, _NUM_TOKENS, MAX_HEAP_SIZE,
JVM_OPTS), so the same code runs on the official image and on CI's local one (LABKIT_IMAGE_CASSANDRA).

Layout, the same plan as the local provider's (plan.py: names, datacenters, racks, tokens, seeds, start order;
local.py places the same plan on loopback addresses):

* One node: a container with CQL published on 127.0.0.1.
* Several nodes: a labelled Docker network with its own /24 subnet, so every address is fixed before anything
  starts; node i listens on .(10+i). Clients use the node addresses (``contact_points``, port 9042), which the
  host reaches on Linux (Docker Desktop on macOS/Windows does not route to container addresses: one node there).
* Several datacenters: each node's ``broadcast_address`` is a latency proxy at .(100+i), a small container
  running labkit.services.latency_proxy (image LABKIT_IMAGE_PYTHON) that forwards to the node's storage port
  after the configured delay. ``prefer_local=true`` (a rackdc file passed with -Dcassandra-rackdc.properties,
  which any image honours) makes same-DC peers use the private listen address instead, so only inter-DC traffic
  pays the delay, exactly as with the local provider. ``set_inter_dc_delay`` rewrites the proxies' config files,
  which they poll.

Nodes start in the plan's order, as the local provider starts them: the first seed alone, then every other
node at once.
"""

from __future__ import annotations

import ipaddress
import random
import shutil
import time
from pathlib import Path
from typing import Any

from labkit import paths
from labkit.errors import BadParameter, NotRunning, ServiceFailed
from labkit.services import _docker
from labkit.services._process import LOOPBACK, wait_for
from labkit.services.base import Endpoint, Health, Service
from labkit.services.cassandra.container_proxy import proxy_container, proxy_sources, wait_proxy, write_proxy_configs
from labkit.services.cassandra.driver import peers_converged, release_version
from labkit.services.cassandra.flags import FAST_START, LIGHT_JVM, PROFILES, rackdc_properties
from labkit.services.cassandra.java import check_memory
from labkit.services.cassandra.plan import ClusterPlan, cluster_endpoint, format_nodes

CQL = 9042
_NODE_OFFSET, _PROXY_OFFSET = 10, 100
# the local provider's fast dev start (flags.FAST_START), given to any image through JVM_OPTS
_FAST_START = " ".join(FAST_START)
# the light profile's settings that any image honours through JVM_OPTS: Netty's allocator (system properties).
# The collector and heap come from the image's own jvm options files and MAX_HEAP_SIZE (the official image
# selects G1 there, and a second collector flag would stop the JVM); CI's local image is built from the local
# provider's flags and yaml (labkit/services/_docker_images.py), so it gets the whole light profile.
_LIGHT_PORTABLE = " ".join(f for f in LIGHT_JVM if f.startswith("-Dio.netty."))


class DockerCassandra(Service):
    """Cassandra 5.0 nodes as containers (see the module docstring). Faults act on one container per node."""

    kind = "cassandra"
    provider = "docker"

    def __init__(
        self,
        name: str = "cassandra",
        *,
        nodes: str | dict[str, int] = "dc1:1",
        profile: str = "light",
        heap_mb: int | None = None,
        image: str | None = None,
        inter_dc_delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        **_: Any,
    ) -> None:
        super().__init__(name)
        self.plan = ClusterPlan.of(nodes)
        self.datacenters = self.plan.datacenters
        if profile not in PROFILES:
            raise BadParameter(f"profile={profile!r}: use one of {', '.join(PROFILES)}")
        if inter_dc_delay_ms < 0 or jitter_ms < 0:
            raise BadParameter("inter_dc_delay_ms and jitter_ms must be >= 0 (milliseconds, one way)")
        self.profile = profile
        self.heap_mb = int(heap_mb or PROFILES[profile]["heap_mb"])
        self.image = image or _docker.image("cassandra")
        self.proxy_image = _docker.image("python")
        self.inter_dc_delay_ms, self.jitter_ms = float(inter_dc_delay_ms), float(jitter_ms)
        self.nodes: list[dict[str, Any]] = []  # name, dc, token, container, address, proxy, proxy_container
        self.network_name: str | None = None
        self.dir = paths.instances_dir() / _docker.container_name(name, "cassandra")

    # -- layout ---------------------------------------------------------------------------------------------------
    @property
    def multi_node(self) -> bool:
        return self.plan.multi_node

    @property
    def multi_dc(self) -> bool:
        return self.plan.multi_dc

    def options(self) -> dict[str, Any]:
        return {
            "nodes": format_nodes(self.datacenters),
            "profile": self.profile,
            "heap_mb": self.heap_mb,
            "inter_dc_delay_ms": self.inter_dc_delay_ms,
            "jitter_ms": self.jitter_ms,
        }

    def _place(self) -> None:
        """The plan's nodes as containers (addresses come with the network, _create_network)."""
        self.nodes = [
            {
                "name": p.name,
                "dc": p.dc,
                "rack": p.rack,
                "token": p.token,
                "container": _docker.container_name(self.name, p.name),
                "proxy_container": _docker.container_name(self.name, f"{p.name}-proxy") if self.multi_dc else None,
                "address": None,
                "proxy": None,
            }
            for p in self.plan.nodes
        ]

    def _create_network(self) -> None:
        """A labelled bridge network on a free 10.x.y.0/24 (fixed addresses need a subnet of our own)."""
        from docker.types import IPAMConfig, IPAMPool

        name = _docker.container_name(self.name, "net")
        last: Exception | None = None
        for _ in range(30):
            subnet = ipaddress.ip_network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
            try:
                _docker.client().networks.create(
                    name,
                    driver="bridge",
                    labels=_docker.labels(self.name),
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))]),
                )
            except Exception as e:  # noqa: BLE001 - the subnet overlaps another network: try another one
                last = e
                continue
            self.network_name = name
            hosts = list(subnet.hosts())
            for i, n in enumerate(self.nodes):
                n["address"] = str(hosts[_NODE_OFFSET + i - 1])
                if self.multi_dc:
                    n["proxy"] = str(hosts[_PROXY_OFFSET + i - 1])
            return
        raise ServiceFailed(f"could not create a Docker network for cassandra '{self.name}': {last}")

    def _broadcast(self, n: dict[str, Any]) -> str:
        return n["proxy"] if self.multi_dc else n["address"]

    def _seeds(self) -> str:
        return ",".join(self._broadcast(self._node(p.name)) for p in self.plan.seeds())

    # -- containers -----------------------------------------------------------------------------------------------
    def _run(self, container: Any, name: str, ip: str | None, publish_cql: bool = False) -> None:
        """Create and start one container (no wait): named, labelled, on the network at a fixed address."""
        from docker.types import EndpointConfig

        _docker.prepare(container, name, self.name)
        if self.network_name is not None:
            kw = dict(container._kwargs)
            kw["network"] = self.network_name
            kw["networking_config"] = {self.network_name: EndpointConfig("1.41", ipv4_address=ip)}
            container.with_kwargs(**kw)
        if publish_cql:
            container.ports[f"{CQL}/tcp"] = (LOOPBACK, None)
        container.start()

    def _node_container(self, n: dict[str, Any]) -> Any:
        from testcontainers.core.container import DockerContainer

        c = DockerContainer(self.image)
        jvm = f"{_FAST_START} -Dcassandra.initial_token={n['token']}"
        if self.profile == "light":
            jvm += f" {_LIGHT_PORTABLE}"
        env = {
            "CASSANDRA_CLUSTER_NAME": self.plan.cluster_name(self.name),
            "CASSANDRA_DC": n["dc"],
            "CASSANDRA_RACK": n["rack"],
            "CASSANDRA_ENDPOINT_SNITCH": "GossipingPropertyFileSnitch",
            "CASSANDRA_NUM_TOKENS": "1",
            "MAX_HEAP_SIZE": f"{self.heap_mb}M",
            "HEAP_NEWSIZE": "64M",
        }
        if self.multi_node:
            env.update(
                {
                    "CASSANDRA_SEEDS": self._seeds(),
                    "CASSANDRA_LISTEN_ADDRESS": n["address"],
                    "CASSANDRA_BROADCAST_ADDRESS": self._broadcast(n),
                    "CASSANDRA_BROADCAST_RPC_ADDRESS": n["address"],
                }
            )
        if self.multi_dc:
            # dc, rack and prefer_local in a file of our own: same-DC peers then bypass the proxies
            rackdc = self.dir / "rackdc"
            rackdc.mkdir(parents=True, exist_ok=True)
            (rackdc / f"{n['name']}.properties").write_text(rackdc_properties(n["dc"], n["rack"]))
            c.with_volume_mapping(str(rackdc), "/labkit-rackdc", "ro")
            jvm += f" -Dcassandra-rackdc.properties=file:///labkit-rackdc/{n['name']}.properties"
        env["JVM_OPTS"] = jvm
        for k, v in env.items():
            c.with_env(k, v)
        return c

    def start(self) -> Endpoint:
        """Start the nodes (first seed, then the rest at once) and wait until each answers CQL."""
        if self.nodes and all(_docker.state(n["container"]) == "running" for n in self.nodes):
            return self.endpoint
        if self.nodes:  # after kill(): start the stopped containers again, same addresses and data
            return self._restart_stopped()
        _docker.require_docker()
        check_memory(self.plan.size, PROFILES[self.profile]["footprint_mb"])
        self._place()
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + 180 + 90 * len(self.nodes)  # JVMs on a busy 2-core machine
        try:
            if self.multi_node:
                self._create_network()
            if self.multi_dc:
                src = proxy_sources(self.dir)
                write_proxy_configs(self.dir, self.nodes, self.inter_dc_delay_ms, self.jitter_ms)
                for n in self.nodes:
                    self._run(
                        proxy_container(self.proxy_image, self.dir, n["name"], src), n["proxy_container"], n["proxy"]
                    )
                for n in self.nodes:
                    wait_proxy(self.dir, n, deadline)
            for names in self.plan.start_groups():
                group = [self._node(nm) for nm in names]
                for n in group:
                    self._run(self._node_container(n), n["container"], n["address"], publish_cql=not self.multi_node)
                for n in group:
                    self._wait_node(n, deadline)
            self._endpoint = self._make_endpoint()
            if self.multi_node:
                self._wait_converged(deadline)
        except BaseException:
            self.stop()
            raise
        return self._endpoint

    def _restart_stopped(self) -> Endpoint:
        deadline = time.monotonic() + 180 + 90 * len(self.nodes)  # JVMs on a busy 2-core machine
        for n in self.nodes:
            for name in (n["proxy_container"], n["container"]):
                if name and _docker.state(name) == "paused":
                    _docker.unpause(name)
                if name and _docker.state(name) in ("exited", "created"):
                    _docker.client().containers.get(name).start()
        for n in self.nodes:
            self._wait_node(n, deadline)
        self._endpoint = self._make_endpoint()
        return self._endpoint

    def _cql_address(self, n: dict[str, Any]) -> tuple[str, int]:
        if self.multi_node:
            return n["address"], CQL
        return LOOPBACK, _docker.published_port(n["container"], CQL)

    def _wait_node(self, n: dict[str, Any], deadline: float) -> None:
        host, port = self._cql_address(n)

        def ready() -> bool:
            st = _docker.state(n["container"])
            if st not in ("running", "created"):
                raise ServiceFailed(f"Cassandra container {n['name']} is {st}:\n{_docker.logs_by_name(n['container'])}")
            try:
                return bool(release_version(host, port, timeout=3))
            except Exception:  # noqa: BLE001 - not listening yet
                return False

        wait_for(
            f"Cassandra container {n['name']} ({host}:{port}) to answer CQL",
            ready,
            max(5.0, deadline - time.monotonic()),
            on_fail=lambda: _docker.logs_by_name(n["container"], 30),
            interval=1.0,
        )

    def _wait_converged(self, deadline: float) -> None:
        """Every node lists every other as a peer (schema changes then reach everyone)."""
        view = [(n["address"], CQL, self._broadcast(n)) for n in self.nodes]
        wait_for(
            f"Cassandra cluster '{self.name}' to see all {len(self.nodes)} nodes",
            lambda: peers_converged(view),
            max(5.0, deadline - time.monotonic()),
            interval=1.0,
        )

    def _make_endpoint(self) -> Endpoint:
        nodes = []
        for n in self.nodes:
            host, port = self._cql_address(n)
            nodes.append(
                {"name": n["name"], "dc": n["dc"], "address": host, "native_port": port, "container": n["container"]}
            )
        return cluster_endpoint(self.kind, self.name, self.provider, nodes)

    # -- delay, stop, records ---------------------------------------------------------------------------------------
    def set_inter_dc_delay(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Change the one-way inter-DC delay while the cluster runs (a cross-DC round trip costs 2x this)."""
        if delay_ms < 0 or jitter_ms < 0:
            raise BadParameter("delay_ms and jitter_ms must be >= 0 (milliseconds, one way)")
        if self.nodes and not self.multi_dc and delay_ms:
            raise BadParameter(
                f"cassandra '{self.name}' has one datacenter, so there is no inter-DC link to slow "
                'down: start it with two, e.g. nodes="us:1,eu:1"'
            )
        self.inter_dc_delay_ms, self.jitter_ms = float(delay_ms), float(jitter_ms)
        if self.nodes and self.multi_dc:
            write_proxy_configs(self.dir, self.nodes, self.inter_dc_delay_ms, self.jitter_ms)
            time.sleep(0.15)  # the proxies poll their config every 50 ms

    def _names(self) -> list[str]:
        return [nm for n in self.nodes for nm in (n["container"], n["proxy_container"]) if nm]

    def stop(self) -> None:
        _docker.remove(self._names())
        if self.network_name is not None:
            try:
                _docker.client().networks.get(self.network_name).remove()
            except Exception:  # noqa: BLE001 - already gone
                pass
            self.network_name = None
        self.nodes = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def to_record(self) -> dict[str, Any]:
        rec = super().to_record()
        rec.update(
            containers=self._names(),
            networks=[self.network_name] if self.network_name else [],
            dir=str(self.dir),
            options=self.options(),
            layout={"nodes": self.nodes, "network": self.network_name},
        )
        return rec

    def _adopt(self, record: dict[str, Any]) -> None:
        if record.get("endpoint"):
            self._endpoint = Endpoint.from_dict(record["endpoint"])
        layout = record.get("layout") or {}
        self.nodes = list(layout.get("nodes", []))
        self.network_name = layout.get("network")
        if record.get("dir"):
            self.dir = Path(record["dir"])

    # -- health, faults -------------------------------------------------------------------------------------------
    def health(self) -> Health:
        if not self.nodes:
            return Health(False, "not started")
        down = [n["name"] for n in self.nodes if _docker.state(n["container"]) != "running"]
        try:
            v = self.version()
        except Exception as e:  # noqa: BLE001
            return Health(False, f"no CQL answer: {e}")
        if down:
            return Health(False, f"answers CQL ({v}) but node(s) {', '.join(down)} are not running")
        return Health(True, f"{len(self.nodes)} node(s) answer CQL (Cassandra {v})")

    def version(self) -> str:
        last: Exception | None = None
        for n in self.nodes:
            if _docker.state(n["container"]) != "running":
                continue
            try:
                host, port = self._cql_address(n)
                return release_version(host, port)
            except Exception as e:  # noqa: BLE001 - try the next node
                last = e
        raise NotRunning(f"no node of cassandra '{self.name}' answers CQL ({last}): start() it")

    def logs(self, lines: int = 50) -> str:
        return "\n".join(f"--- {n['name']} ---\n{_docker.logs_by_name(n['container'], lines)}" for n in self.nodes)

    def node_names(self) -> list[str]:
        return [n["name"] for n in self.nodes]

    def _node(self, which: int | str) -> dict[str, Any]:
        for i, n in enumerate(self.nodes):
            if which in (i, n["name"]):
                return n
        raise BadParameter(f"no node {which!r}: nodes are {', '.join(self.node_names())}")

    def kill_node(self, which: int | str) -> None:
        _docker.signal(self._node(which)["container"], "SIGKILL")

    def pause_node(self, which: int | str) -> None:
        _docker.pause(self._node(which)["container"])

    def resume_node(self, which: int | str) -> None:
        _docker.unpause(self._node(which)["container"])

    def kill(self) -> None:
        for n in self.nodes:
            self.kill_node(n["name"])

    def pause(self) -> None:
        for n in self.nodes:
            self.pause_node(n["name"])

    def resume(self) -> None:
        for n in self.nodes:
            self.resume_node(n["name"])
