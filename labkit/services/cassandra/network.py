"""The network of a local Cassandra cluster: its loopback addresses and ports, and the inter-DC latency proxy.

Cluster k gets 127.0.k.n for node n and 127.0.k.(100+n) for node n's latency proxy (the broadcast address
peers in other datacenters use); see local.py for why each inter-DC message crosses exactly one proxy.
LocalCassandra takes the proxy's part from InterDcLinks: the delay, a partition, and the bytes that crossed.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from labkit.errors import BadParameter, ProviderUnavailable, ServiceFailed
from labkit.services._process import LOOPBACK, ManagedProcess, free_port, port_is_free, same_process
from labkit.services.cassandra.node import CassandraNode
from labkit.services.cassandra.plan import ClusterPlan

PROXY_OFFSET = 100  # node n's latency proxy listens on 127.0.k.(100+n)


def _can_bind(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
            return True
        except OSError:
            return False


def pick_loopback(count: int) -> tuple[list[str], list[str], int, int]:
    """A free 127.0.k.0/24 for `count` nodes: (node addresses, proxy addresses, CQL port, storage port)."""
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
            proxies = [f"127.0.{k}.{PROXY_OFFSET + i}" for i in range(1, count + 1)]
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
    return addrs, proxies, native, storage


class InterDcLinks:
    """The latency proxy of a multi-DC local cluster (a mixin of LocalCassandra, whose attributes it uses)."""

    name: str
    dir: Path
    plan: ClusterPlan
    datacenters: dict[str, int]
    nodes: list[CassandraNode]
    storage_port: int
    inter_dc_delay_ms: float
    jitter_ms: float
    partitioned: bool
    proxy: ManagedProcess | None
    proxy_ref: dict[str, float] | None

    def _save_layout(self) -> None:
        raise NotImplementedError

    @property
    def multi_dc(self) -> bool:
        """Only clusters with several datacenters get latency proxies (one DC has no inter-DC link)."""
        return self.plan.multi_dc

    def _proxy_alive(self) -> bool:
        return self.proxy_ref is not None and same_process(self.proxy_ref) is not None

    def _broadcast(self, n: CassandraNode) -> str:
        return n.proxy_address if self.multi_dc else n.address

    def _start_proxy(self) -> ManagedProcess:
        """One proxy process for every node's route (its config file is the routes of _proxy_routes)."""
        from labkit.services.latency_proxy import start_proxy_process

        self.proxy = start_proxy_process(self._proxy_config, self._proxy_routes())
        self.proxy_ref = self.proxy.ref
        return self.proxy

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
