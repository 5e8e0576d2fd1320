"""The userspace latency proxy against a real TCP echo server and a real memcached.

Each claim compares measurements from the same run (direct vs through the proxy), so a slow machine only
adds to both sides; lower bounds are exact (the proxy never delivers early), upper bounds are generous.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time

import psutil
import pytest
from pymemcache.client.base import Client

from labkit.errors import BadParameter
from labkit.services.latency_proxy import LatencyProxy
from labkit.services.memcached import LocalMemcached


@pytest.fixture(scope="module")
def echo_server():
    """A real TCP echo server (one thread per connection)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
            except OSError:  # a partition test resets the connection
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()
    stop.set()
    srv.close()


def rtt_ms(address: tuple[str, int], n: int = 15, size: int = 16) -> float:
    """Median round trip of a small message over one connection."""
    with socket.create_connection(address, timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        payload = b"x" * size
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(payload)
            got = b""
            while len(got) < size:
                got += s.recv(size - len(got))
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def echo_bulk(address: tuple[str, int], data: bytes) -> tuple[bytes, float]:
    """Send `data` and read the echo concurrently; return what came back and the elapsed seconds."""
    got = bytearray()
    with socket.create_connection(address, timeout=30) as s:

        def read() -> None:
            while len(got) < len(data):
                chunk = s.recv(1 << 20)
                if not chunk:
                    return
                got.extend(chunk)

        t0 = time.perf_counter()
        reader = threading.Thread(target=read)
        reader.start()
        s.sendall(data)
        reader.join(60)
        return bytes(got), time.perf_counter() - t0


def test_added_round_trip_is_twice_the_one_way_delay(echo_server):
    direct = rtt_ms(echo_server)
    with LatencyProxy(target=echo_server, delay_ms=25) as px:
        proxied = rtt_ms(px.address)
        px.set_delay(60)
        slower = rtt_ms(px.address, n=8)
    print(f"\necho RTT direct {direct:.2f} ms, via proxy 25 ms one-way {proxied:.2f} ms, 60 ms {slower:.2f} ms")
    for added, d in ((proxied - direct, 25), (slower - direct, 60)):
        assert 2 * d <= added + 0.5 <= 2 * d + 25, f"added RTT {added:.1f} ms for {d} ms one-way"


def test_delay_per_direction(echo_server):
    direct = rtt_ms(echo_server)
    with LatencyProxy(target=echo_server, delay_ms=(40, 0)) as px:
        added = rtt_ms(px.address) - direct
    assert 40 <= added + 0.5 <= 40 + 25, f"added RTT {added:.1f} ms with 40 ms up, 0 down"


def test_jitter_spreads_latency_but_keeps_byte_order(echo_server):
    with LatencyProxy(target=echo_server, delay_ms=20, jitter_ms=15) as px:
        with socket.create_connection(px.address, timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for i in range(20):
                t0 = time.perf_counter()
                s.sendall(f"{i:08d}".encode())
                got = b""
                while len(got) < 8:
                    got += s.recv(8 - len(got))
                times.append((time.perf_counter() - t0) * 1000)
                assert got == f"{i:08d}".encode()
            # many small writes in flight at once: order must hold even though each gets its own jitter
            stream = b"".join(f"{i:08d}".encode() for i in range(2000))
            for i in range(0, len(stream), 8):
                s.sendall(stream[i : i + 8])
            got = b""
            while len(got) < len(stream):
                got += s.recv(65536)
            assert got == stream
    assert max(times) - min(times) > 5, f"jitter 15 ms but RTTs spread only {max(times) - min(times):.1f} ms"
    assert min(times) >= 2 * 5 - 0.5  # never below 2*(delay - jitter)


def test_large_payload_is_intact_and_delay_does_not_serialise_throughput(echo_server):
    data = os.urandom(16 * 2**20)
    with LatencyProxy(target=echo_server, delay_ms=0) as px:
        got0, t0 = echo_bulk(px.address, data)
        px.set_delay(50)
        got50, t50 = echo_bulk(px.address, data)
    assert got0 == data and got50 == data
    chunks = len(data) // (64 * 1024)
    print(f"\n16 MiB echo via proxy: {t0:.2f} s at 0 ms, {t50:.2f} s at 50 ms one-way")
    # a sleep per chunk would add >= chunks * 50 ms (>= 12 s); timestamped queues add about one RTT
    assert t50 - t0 < 0.1 * chunks * 0.050, f"{t50 - t0:.2f} s added for {chunks} chunks: delay serialised"


def test_memcached_behind_the_proxy():
    with LocalMemcached("mc-proxy", memory_mb=16) as mc:
        direct = Client(mc.endpoint.address, connect_timeout=2, timeout=5)
        with LatencyProxy(target=mc.endpoint.address, delay_ms=20) as px:
            proxied = Client(px.address, connect_timeout=2, timeout=5)
            big = os.urandom(900_000)
            assert proxied.set("big", big, noreply=False) and direct.get("big") == big and proxied.get("big") == big

            def median_get(client: Client) -> float:
                times = []
                for _ in range(15):
                    t0 = time.perf_counter()
                    client.get("big")
                    times.append(time.perf_counter() - t0)
                return statistics.median(times) * 1000

            d, p = median_get(direct), median_get(proxied)
            proxied.close()
            pid = px.pids()[0]["pid"]
        direct.close()
    print(f"\nmemcached get of 900 kB: direct {d:.2f} ms, via 20 ms proxy {p:.2f} ms")
    assert 40 <= p - d + 0.5 <= 40 + 30, f"added {p - d:.1f} ms, expected about 40"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_bad_delays_are_refused(echo_server):
    with pytest.raises(BadParameter, match=">= 0"):
        LatencyProxy(target=echo_server, delay_ms=-1)
    with pytest.raises(BadParameter, match="target"):
        LatencyProxy(target=("127.0.0.1", 0))


def test_proxy_of_a_killed_owner_exits_by_itself(echo_server, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import json, time; from labkit.services.latency_proxy import LatencyProxy\n"
        f"px = LatencyProxy(target={tuple(echo_server)!r}, delay_ms=5).start()\n"
        "print(json.dumps(px.pids()[0]['pid']), flush=True); time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid = json.loads(owner.stdout.readline())
        assert psutil.pid_exists(pid)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    deadline = time.monotonic() + 10
    while (
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_byte_counters_per_direction(echo_server):
    with LatencyProxy(target=echo_server, delay_ms=0) as px:
        assert px.stats()["up"] == 0 and px.stats()["down"] == 0
        with socket.create_connection(px.address, timeout=10) as s:
            s.sendall(b"x" * 5000)
            got = b""
            while len(got) < 5000:
                got += s.recv(65536)
        st = px.stats()
    assert st["up"] == 5000 and st["down"] == 5000 and st["connections"] == 1, st


def test_one_sided_traffic_is_counted_on_its_side_only(echo_server):
    """A server that only receives: up counts every byte, down none."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    received = []

    def sink() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                received.append(len(data))

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    with LatencyProxy(target=srv.getsockname(), delay_ms=0) as px:
        with socket.create_connection(px.address, timeout=10) as s:
            s.sendall(b"y" * 30000)
        t.join(10)
        st = px.stats()
    srv.close()
    assert sum(received) == 30000 and st["up"] == 30000 and st["down"] == 0, st


def test_partition_stops_forwarding_and_heal_restores_it(echo_server):
    with LatencyProxy(target=echo_server, delay_ms=5) as px:
        s = socket.create_connection(px.address, timeout=5)
        s.sendall(b"ping")
        assert s.recv(16) == b"ping"
        px.partition()
        # the open connection is cut (reset or EOF) ...
        with pytest.raises(OSError):
            s.sendall(b"again")
            if s.recv(16) == b"":
                raise ConnectionResetError("closed by the partition")
        s.close()
        before = px.stats()
        # ... and a new one is closed at once without reaching the server
        with socket.create_connection(px.address, timeout=5) as s2:
            try:
                s2.sendall(b"hello?")
                assert s2.recv(16) == b""
            except OSError:
                pass
        after = px.stats()
        assert after["refused"] >= 1 and after["up"] == before["up"] and after["down"] == before["down"]
        assert after["blocked"] == 1
        px.heal()
        assert rtt_ms(px.address, n=3) >= 10 - 0.5  # forwarding again, with the delay
        assert px.stats()["blocked"] == 0
