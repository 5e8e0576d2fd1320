"""The plan of a Cassandra cluster that both providers start: node names, datacenters, racks, tokens, seeds and
the start order. Only the addresses differ by provider (127.0.k.n on loopback, a Docker network's subnet).

Node spec syntax (``nodes=``): comma-separated ``<dc>:<count>`` pairs, e.g. ``"dc1:1"`` (one node),
``"dc1:3"`` (one datacenter of three), ``"us:3,eu:2"`` (two datacenters). A dict ``{"us": 3, "eu": 2}``
works too. Datacenter names are letters, digits, ``_`` or ``-``; nodes are named ``<dc><i>`` (us1, us2, eu1;
``dc1_1`` when the DC name ends in a digit).

Every node owns one fixed token (``num_tokens: 1``, evenly spaced per DC), so a fresh cluster needs no
bootstrap streaming and its nodes may join together: the first seed starts alone (nobody to gossip with
yet), then all the others at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labkit.errors import BadParameter
from labkit.services.base import Endpoint

SPEC_SYNTAX = (
    'nodes must look like "dc1:1" or "us:3,eu:2" (comma-separated <datacenter>:<count>, '
    "datacenter names of letters, digits, _ or -, 1-9 nodes each)"
)
RACK = "rack1"
_DC_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


def parse_nodes(spec: str | Mapping[str, int]) -> dict[str, int]:
    """``"us:3,eu:2"`` -> ``{"us": 3, "eu": 2}`` (order kept: the first DC is the endpoint's local_dc)."""
    items: list[tuple[str, str | int]]  # counts: text from a spec string, or a dict's values
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    elif isinstance(spec, str) and spec.strip():
        items = []
        for part in spec.split(","):
            dc, sep, count_text = part.strip().partition(":")
            if not sep:
                raise BadParameter(f"{SPEC_SYNTAX}; got {spec!r}")
            items.append((dc.strip(), count_text.strip()))
    else:
        raise BadParameter(f"{SPEC_SYNTAX}; got {spec!r}")
    out: dict[str, int] = {}
    for dc, count in items:
        try:
            n = int(count)
        except (TypeError, ValueError):
            raise BadParameter(f"{SPEC_SYNTAX}; {count!r} is not a node count in {spec!r}") from None
        if not _DC_RE.fullmatch(dc) or not 1 <= n <= 9 or dc in out:
            raise BadParameter(f"{SPEC_SYNTAX}; got {spec!r}")
        out[dc] = n
    if not out:
        raise BadParameter(f"{SPEC_SYNTAX}; got {spec!r}")
    return out


def format_nodes(nodes: Mapping[str, int]) -> str:
    """The inverse of parse_nodes: ``{"us": 3, "eu": 2}`` -> ``"us:3,eu:2"`` (what a stack record keeps)."""
    return ",".join(f"{dc}:{n}" for dc, n in nodes.items())


def initial_token(dc_index: int, i: int, count: int) -> int:
    """Evenly spaced Murmur3 tokens per DC, offset per DC so no two nodes share one (no random collisions)."""
    return -(2**63) + i * (2**64 // count) + dc_index * 1000


def node_name(dc: str, i: int) -> str:
    """The i-th node (0-based) of a datacenter: us1, eu2; dc1_1 when the DC name ends in a digit."""
    return f"{dc}_{i + 1}" if dc[-1].isdigit() else f"{dc}{i + 1}"


@dataclass(frozen=True)
class NodePlan:
    """One planned node: what it is called, where it sits in the ring and in the cluster's order (index)."""

    index: int
    name: str
    dc: str
    rack: str
    token: int


@dataclass(frozen=True)
class ClusterPlan:
    """The provider-independent shape of a cluster (see the module docstring)."""

    datacenters: dict[str, int]
    nodes: tuple[NodePlan, ...]

    @classmethod
    def of(cls, spec: str | Mapping[str, int]) -> ClusterPlan:
        """Plan the cluster a node spec asks for (raises BadParameter with the syntax on a bad spec)."""
        dcs = parse_nodes(spec)
        nodes: list[NodePlan] = []
        for dc_index, (dc, count) in enumerate(dcs.items()):
            for j in range(count):
                nodes.append(NodePlan(len(nodes), node_name(dc, j), dc, RACK, initial_token(dc_index, j, count)))
        return cls(dcs, tuple(nodes))

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def multi_node(self) -> bool:
        return self.size > 1

    @property
    def multi_dc(self) -> bool:
        """Only clusters of several datacenters get latency proxies (one DC has no inter-DC link)."""
        return len(self.datacenters) > 1

    def seeds(self) -> list[NodePlan]:
        """The first node of each datacenter."""
        first: dict[str, NodePlan] = {}
        for n in self.nodes:
            first.setdefault(n.dc, n)
        return list(first.values())

    def start_groups(self, names: list[str] | None = None) -> list[list[str]]:
        """The order to start the named nodes in (all by default): the first seed alone, then all the rest.

        With fixed tokens and no bootstrap, nodes may join together once one seed is up, and the JVM start-ups
        overlap on the cores.
        """
        todo = [n.name for n in self.nodes] if names is None else list(names)
        first = [n.name for n in self.seeds()[:1] if n.name in todo]
        return [g for g in (first, [nm for nm in todo if nm not in first]) if g]

    def cluster_name(self, service_name: str) -> str:
        return f"labkit-{service_name}"


def cluster_endpoint(kind: str, name: str, provider: str, nodes: list[dict[str, Any]]) -> Endpoint:
    """The endpoint of a running cluster, the same shape for both providers: the first node is the host, its DC
    the local_dc; ``nodes`` are dicts with at least name, dc, address and native_port (in plan order)."""
    dcs: dict[str, list[str]] = {}
    for n in nodes:
        dcs.setdefault(n["dc"], []).append(n["address"])
    first = nodes[0]
    return Endpoint(
        kind=kind,
        name=name,
        provider=provider,
        host=first["address"],
        port=first["native_port"],
        extra={
            "contact_points": [n["address"] for n in nodes],
            "local_dc": first["dc"],
            "datacenters": dcs,
            "port": first["native_port"],
            "nodes": nodes,
        },
    )
