"""The docker provider on a real engine: Postgres and memcached containers through testcontainers.

CI runs these inside the network namespace of its private engine (`make docker-test`), on locally built images
with the official images' contract; elsewhere they run wherever a Docker daemon answers. They refuse to run
from the host's namespace of a machine with a /.dockerenv (labkit.services.host_namespace_refusal), and with
LABKIT_REQUIRE_DOCKER=1 (CI) a missing engine fails them instead of skipping them (the `docker_engine` fixture,
tests/conftest.py). They go through labkit's public API and check what it claims by asking the daemon directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from pymemcache.client.base import Client

import labkit
from labkit.services import host_namespace_refusal, service_class
from labkit.services.memcached import query_stats
from labkit.services.memcached import query_version as mc_version

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]
ROOT = Path(__file__).resolve().parent.parent


def test_refuses_the_host_namespace_of_a_machine_with_dockerenv(monkeypatch):
    """The guard itself: outside labkit's namespace it names the way to run the tests; inside it is silent."""
    if not os.path.exists("/.dockerenv"):
        assert host_namespace_refusal() is None
        return
    monkeypatch.setenv("LABKIT_NETNS", "no-such-namespace")
    refusal = host_namespace_refusal()
    assert refusal is not None and "refusing" in refusal and "make docker-test" in refusal
    monkeypatch.undo()
    assert host_namespace_refusal() is None  # we are inside the namespace (or the test failed earlier)


def test_images_come_from_configuration(monkeypatch):
    memcached = service_class("memcached", "docker")  # constructing a service starts nothing
    monkeypatch.setenv("LABKIT_IMAGE_MEMCACHED", "example/memcached:9")
    assert memcached("m").image == "example/memcached:9"
    monkeypatch.delenv("LABKIT_IMAGE_MEMCACHED")
    default = memcached("m").image  # the official image, pinned by tag
    assert default.split(":")[0] == "memcached" and default.split(":")[1] not in ("", "latest"), default


def _in_container(engine, name: str, *cmd: str) -> str:  # noqa: ANN001 - tests/conftest.py DockerEngine
    res = engine.client.containers.get(name).exec_run(list(cmd))
    assert res.exit_code == 0, res.output
    return res.output.decode().strip()


def test_postgres_and_memcached_same_contract_real_versions(docker_engine):
    with labkit.stack("postgres", "memcached", provider="docker", attach=False) as st:
        pg, mc = st.endpoint("postgres"), st.endpoint("memcached")
        assert pg.host == "127.0.0.1" and mc.host == "127.0.0.1" and pg.provider == mc.provider == "docker"
        assert st.service("postgres").health().ok and st.service("memcached").health().ok
        with psycopg.connect(pg.dsn) as conn:  # POSTGRES_USER/PASSWORD/DB honoured, initdb done by the image
            assert conn.execute("SELECT current_user, current_database(), 6*7").fetchone() == ("labkit", "labkit", 42)
            assert conn.execute("SHOW max_connections").fetchone() == ("200",)  # -c arguments reach the server
        with pytest.raises(psycopg.OperationalError):  # the generated password is required
            psycopg.connect(pg.dsn.replace(pg.password, "wrong"), connect_timeout=5)
        # the version the server reports is the binary's in the container, not a label
        pg_bin = _in_container(docker_engine, st.service("postgres").container_name, "postgres", "--version")
        assert st.service("postgres").version().split()[0] in pg_bin
        mc_bin = _in_container(docker_engine, st.service("memcached").container_name, "memcached", "--version")
        assert mc_bin.split()[-1] == st.service("memcached").version() and mc_version(mc).startswith("1.")
        big = os.urandom(1_000_000)  # -I 2m reached memcached: a 1 MB item is stored
        client = Client(mc.address)
        assert client.set("big", big, noreply=False) and client.get("big") == big
        assert int(query_stats(mc)["limit_maxbytes"]) == st.service("memcached").memory_mb * 1024 * 1024


def test_faults_kill_pause_resume_through_docker(docker_engine):
    with labkit.stack("postgres", "memcached", provider="docker", attach=False) as st:
        pg, mcs = st.service("postgres"), st.service("memcached")
        with psycopg.connect(pg.endpoint.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
        # pause: the container is frozen, a request times out; resume: it answers again
        mcs.pause()
        assert docker_engine.state(mcs.container_name) == "paused"
        with pytest.raises(OSError):
            mc_version_with_timeout(mcs.endpoint.address, 1.0)
        mcs.resume()
        assert mcs.health().ok
        # kill: SIGKILL through Docker, the server is gone; start again: same container, same data
        pg.kill()
        deadline = time.monotonic() + 20
        while docker_engine.state(pg.container_name) == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert docker_engine.state(pg.container_name) == "exited" and not pg.health().ok
        st.restart("postgres")
        with psycopg.connect(pg.endpoint.dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (7,)


def mc_version_with_timeout(address: tuple[str, int], timeout: float) -> bytes:
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(b"version\r\n")
        return s.recv(100)


def test_several_postgres_servers_in_one_stack(docker_engine):
    with labkit.stack("postgres", provider="docker", attach=False) as st:
        a, b = st.service("postgres"), st.add("postgres", name="pg-b")
        assert a.endpoint.port != b.endpoint.port and a.container_name != b.container_name
        with psycopg.connect(a.endpoint.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_a (v int)")
        with psycopg.connect(b.endpoint.dsn) as conn:  # separate servers: b has no such table
            assert conn.execute("SELECT to_regclass('only_in_a')").fetchone() == (None,)
        names = set(docker_engine.labelled())
        assert {a.container_name, b.container_name} <= names


def test_two_stacks_side_by_side(docker_engine):
    with (
        labkit.stack("memcached", provider="docker", attach=False) as a,
        labkit.stack("memcached", provider="docker", attach=False) as b,
    ):
        ea, eb = a.endpoint("memcached"), b.endpoint("memcached")
        assert ea.port != eb.port
        Client(ea.address).set("k", b"from-a", noreply=False)
        assert Client(eb.address).get("k") is None and Client(ea.address).get("k") == b"from-a"
        name_a = a.service("memcached").container_name
    assert docker_engine.state(name_a) == "missing"  # closing a stack removes its containers


_KERNEL = """
import json, sys, time, labkit
st = labkit.stack("memcached", provider="docker", attach=False)
print(json.dumps({"container": st.service("memcached").container_name, "record": str(st.path)}), flush=True)
time.sleep(600)
"""


def _start_kernel(home: Path) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "LABKIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KERNEL], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    line = proc.stdout.readline()
    assert line, "the kernel did not start its stack"
    return proc, json.loads(line)


def _wait_gone(engine, home: Path, timeout: float) -> list[str]:  # noqa: ANN001 - tests/conftest.py DockerEngine
    deadline = time.monotonic() + timeout
    left = engine.labelled(str(home.resolve()))
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = engine.labelled(str(home.resolve()))
    return left


def test_sigkilled_kernel_leaves_no_container_watchdog(tmp_path, docker_engine):
    """A kernel killed by SIGKILL: its stack's watchdog removes the labelled containers."""
    home = tmp_path / "home"
    proc, info = _start_kernel(home)
    assert docker_engine.state(info["container"]) == "running"
    os.killpg(proc.pid, signal.SIGKILL)  # the kernel and its process group; the watchdog has its own session
    proc.wait()
    assert _wait_gone(docker_engine, home, 30) == []


def test_sigkilled_kernel_and_watchdog_labkit_down_removes_containers(tmp_path, docker_engine):
    """Kernel and watchdog both SIGKILLed: `labkit down` removes what the record names, and any labelled
    container that no record names (a crash between create and record)."""
    home = tmp_path / "home"
    proc, info = _start_kernel(home)
    record = json.loads(Path(info["record"]).read_text())
    os.kill(record["watchdog"]["pid"], signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # a container created and labelled for this home but never recorded (the kernel's image: the same memcached)
    image = docker_engine.client.containers.get(info["container"]).image
    stray = docker_engine.client.containers.run(
        image,
        ["memcached"],
        detach=True,
        name=f"labkit-test-stray-{os.urandom(3).hex()}",
        labels={docker_engine.LABEL_HOME: str(home.resolve())},
    )
    assert len(docker_engine.labelled(str(home.resolve()))) == 2
    env = {**os.environ, "LABKIT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "down"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert docker_engine.labelled(str(home.resolve())) == [] and docker_engine.state(stray.name) == "missing"
    assert docker_engine.state(info["container"]) == "missing"
