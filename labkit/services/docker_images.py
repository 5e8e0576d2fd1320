"""Files baked into labkit's locally built Cassandra image (`.ci/images/build`), made by the local provider's code.

Cassandra is not a Debian package, so the image carries the Maven Central jars the local provider uses and is
launched with the SAME JVM flags and the same generated cassandra.yaml: the files below come from
`LocalCassandra._jvm_args` and `LocalCassandra._write_config` (labkit/services/cassandra/flags.py) for one node
whose directory is the image's /var/lib/cassandra, so a change to the local launch is a change to the image at
its next build.

    python -m labkit.services.docker_images cassandra DIR   # writes DIR/conf/* and DIR/jvm.args

The image's entrypoint then applies the official image's environment contract (CASSANDRA_CLUSTER_NAME, _DC,
_RACK, _SEEDS, _ENDPOINT_SNITCH, _LISTEN_ADDRESS, _BROADCAST_ADDRESS, _BROADCAST_RPC_ADDRESS, _NUM_TOKENS,
MAX_HEAP_SIZE, JVM_OPTS) on top of these files.
"""

from __future__ import annotations

import sys
from pathlib import Path

IMAGE_ROOT = Path("/var/lib/cassandra")  # node directory inside the image (data, commitlog, conf, logs ...)
IMAGE_LIB = Path("/opt/cassandra/lib")
IMAGE_CONF = Path("/etc/cassandra")  # CASSANDRA_CONF of the official image


def cassandra_image_files(dest: Path) -> list[str]:
    """Write the image's conf/ (cassandra.yaml, rackdc, logback) and jvm.args under `dest`; return the args."""
    from labkit.services.cassandra import CassandraNode, LocalCassandra

    work = dest / "node"
    c = LocalCassandra("image", nodes="datacenter1:1", instance_dir=dest / "instance")
    c.classpath = [IMAGE_LIB / "jamm.jar"]  # the build script links the real jamm jar to this name
    c.native_port, c.storage_port = 9042, 7000
    n = CassandraNode(
        name=c.plan.nodes[0].name,
        dc="datacenter1",
        rack="rack1",
        address="127.0.0.1",
        proxy_address="127.0.0.1",
        jmx_port=7199,
        token=0,
        dir=work,
        cluster=c,
    )
    c.nodes = [n]
    conf = c._write_config(n)
    args = c._jvm_args(n, IMAGE_CONF)
    # Paths of the build machine become the image's; the instance marker names the image's node directory.
    out_conf = dest / "conf"
    out_conf.mkdir(parents=True, exist_ok=True)
    for f in conf.iterdir():
        text = f.read_text().replace(str(work), str(IMAGE_ROOT))
        # as in the official image: no fixed token (clusters pass -Dcassandra.initial_token in JVM_OPTS) and
        # prefer_local unset (labkit's multi-DC clusters supply their own rackdc file, on any image)
        lines = [ln for ln in text.splitlines() if not ln.startswith(("initial_token:", "prefer_local", "# same-DC"))]
        (out_conf / f.name).write_text("\n".join(lines) + "\n")
    args = [a.replace(str(work), str(IMAGE_ROOT)).replace(str(c.dir), str(IMAGE_ROOT)) for a in args]
    # heap: the entrypoint substitutes MAX_HEAP_SIZE (official image variable), default the light profile's
    args = ["@HEAP@" if a.startswith(("-Xms", "-Xmx")) else a for a in args]
    args = [a for i, a in enumerate(args) if a != "@HEAP@" or "@HEAP@" not in args[:i]]
    (dest / "jvm.args").write_text("\n".join(args) + "\n")
    return args


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "cassandra":
        print("usage: python -m labkit.services.docker_images cassandra DIR", file=sys.stderr)
        return 2
    cassandra_image_files(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
