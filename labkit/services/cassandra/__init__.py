"""Cassandra: real nodes and multi-datacenter clusters as local JVMs (jars from Maven Central), or containers.

    with LocalCassandra("c", nodes="us:2,eu:1", inter_dc_delay_ms=40) as c:
        ep = c.endpoint                        # ep.contact_points, ep.port, ep.local_dc == "us"
        c.node("us2").pause(); c.node("us2").resume()
        c.set_inter_dc_delay(80)

What lives here, one seam per module (anything in labkit may import the names exported below; lessons and
notebooks reach Cassandra through labkit.stack and the endpoint, tests and benchmarks through these names):

* plan.py        the cluster plan both providers start: node spec syntax, names, DCs, racks, tokens, seeds, order
* flags.py       what a node runs with: cassandra.yaml, rackdc, logback, JVM flags, the light and full profiles
* java.py        finding Java 17; the memory check before any node starts
* jars.py        the cassandra-all jars from Maven Central (`labkit fetch cassandra`)
* cds.py         the class-data sharing archive of those jars (built by `labkit fetch cassandra`), mapped by nodes
* driver.py      labkit's own short CQL queries (readiness, peers, schema) through the Python driver
* node.py        one local node: its JVM and its faults (kill, pause, resume, start)
* local.py       LocalCassandra: the local provider's clusters on loopback, with the inter-DC latency proxy
* containers.py  DockerCassandra: the docker provider (imported on first use of DOCKER / DockerCassandra)
"""

from __future__ import annotations

from typing import Any

from labkit.services.cassandra.driver import query_one
from labkit.services.cassandra.flags import FULL_JVM, FULL_YAML, LIGHT_JVM, LIGHT_YAML, PROFILES
from labkit.services.cassandra.java import JAVA_HINT, check_memory, find_java, java_major
from labkit.services.cassandra.local import LocalCassandra
from labkit.services.cassandra.node import CassandraNode
from labkit.services.cassandra.plan import ClusterPlan, format_nodes, parse_nodes

LOCAL = LocalCassandra


def __getattr__(name: str) -> Any:
    """The docker provider (its own module, with the docker client's helpers) is imported on first use."""
    if name in ("DOCKER", "DockerCassandra"):
        from labkit.services.cassandra.containers import DockerCassandra

        return DockerCassandra
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CassandraNode",
    "ClusterPlan",
    "FULL_JVM",
    "FULL_YAML",
    "JAVA_HINT",
    "LIGHT_JVM",
    "LIGHT_YAML",
    "LOCAL",
    "LocalCassandra",
    "PROFILES",
    "check_memory",
    "find_java",
    "format_nodes",
    "java_major",
    "parse_nodes",
    "query_one",
]
