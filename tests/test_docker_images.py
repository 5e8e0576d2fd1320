"""CI's local Cassandra image is launched like the local provider: the files baked into it come from the local
provider's own code (labkit/services/docker_images.py). Runs without Docker (no engine needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from labkit.services.cassandra import CassandraNode, LocalCassandra
from labkit.services.docker_images import IMAGE_CONF, IMAGE_ROOT, cassandra_image_files

ROOT = Path(__file__).resolve().parent.parent


def test_cassandra_image_gets_the_local_providers_flags_and_yaml(tmp_path):
    args = cassandra_image_files(tmp_path / "img")
    c = LocalCassandra("ref", instance_dir=tmp_path / "ref")
    c.classpath = [Path("/x/jamm.jar")]
    c.native_port, c.storage_port = 9042, 7000
    n = CassandraNode(
        name=c.plan.nodes[0].name,
        dc="dc1",
        rack="rack1",
        address="127.0.0.1",
        proxy_address="127.0.0.1",
        jmx_port=7199,
        token=0,
        dir=tmp_path / "ref" / "n",
        cluster=c,
    )
    local = c._jvm_args(n, tmp_path / "conf")
    flags = [a for a in local if not a.startswith(("-Xms", "-Xmx", "-D", "-javaagent"))]
    image_flags = [a for a in args if not a.startswith(("-D", "-javaagent")) and a != "@HEAP@"]
    assert image_flags == flags  # GC, JPMS exports/opens, the light profile's JIT settings: identical
    assert args.count("@HEAP@") == 1 and not any(a.startswith(("-Xms", "-Xmx")) for a in args)
    assert f"-Dcassandra.config=file://{IMAGE_CONF}/cassandra.yaml" in args
    assert "-Dcassandra.ring_delay_ms=1000" in args and f"-Dcassandra.logdir={IMAGE_ROOT}/logs" in args
    assert not any(str(tmp_path) in a for a in args)  # no path of the build machine leaks into the image
    yaml = (tmp_path / "img" / "conf" / "cassandra.yaml").read_text()
    assert "endpoint_snitch:" in yaml and f'"{IMAGE_ROOT}/data"' in yaml and str(tmp_path) not in yaml
    assert "initial_token" not in yaml  # like the official image: tokens come from JVM_OPTS per node
    rackdc = (tmp_path / "img" / "conf" / "cassandra-rackdc.properties").read_text()
    assert rackdc.splitlines() == ["dc=datacenter1", "rack=rack1"]  # prefer_local only where labkit asks for it


def test_ci_scripts_are_wired():
    """.ci/run runs the Docker part after `make test`; every script parses and tears down by PID."""
    run = (ROOT / ".ci/run").read_text()
    assert run.index("\nmake test") < run.index("make docker-test\n")  # the Docker part after the local suite
    # the engine and images build in the background while the local suite runs; the Docker part waits for them,
    # a failed build fails CI, and the trap stops the build and tears the engine down on every exit
    assert run.index("setsid .ci/docker-up") < run.index("\nmake test") < run.index('if ! wait "$docker_up"')
    assert "did not build" in run and "exit 1" in run and "trap stop_docker EXIT" in run and ".ci/docker-down" in run
    for script in ("docker-up", "docker-down", "docker-exec", "docker-test", "images/build"):
        path = ROOT / ".ci" / script
        assert path.stat().st_mode & 0o111, f"{path} is not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)
    test = (ROOT / ".ci/docker-test").read_text()
    assert "trap teardown EXIT" in test and ".ci/docker-down || rc=1" in test
    down = (ROOT / ".ci/docker-down").read_text()
    assert "ip netns delete" in down and 'kill -TERM "$pid"' in down and "pkill" not in down
