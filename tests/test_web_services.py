"""gunicorn and uvicorn as labkit services: real servers that answer, report their version, and are reaped
like every other service (stack close, `labkit down`, a killed kernel's watchdog)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from labkit.errors import BadParameter
from labkit.load.http import http
from labkit.services import stack as stacks
from labkit.services.web import LocalWebServer


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)


def test_gunicorn_serves_with_forked_workers_and_stops(stack):
    svc = stack.add("web", name="gunicorn-t", server="gunicorn", workers=2, provider="local")
    try:
        assert svc.health().ok and svc.version().startswith("gunicorn/")
        master, workers = svc.master().pid, svc.worker_pids()
        assert len(workers) == 2 and master not in workers
        assert all(psutil.Process(w).ppid() == master for w in workers)
        conn = http(svc.endpoint).connect()
        seen = {conn.request("GET", "/cpu?n=10").headers["x-worker-pid"] for _ in range(40)}
        assert seen <= {str(w) for w in workers}
        rec = json.loads(stack.path.read_text())["services"]["gunicorn-t"]
        assert rec["kind"] == "web" and rec["pids"][0]["pid"] == master
    finally:
        stack.remove("gunicorn-t")
    assert wait_gone([master, *workers], 10) == []


def test_uvicorn_serves_and_a_kill_takes_it_down(stack):
    svc = stack.add(
        "web", name="uvicorn-t", server="uvicorn", app="labkit.webapp.dependency:app", workers=1, provider="local"
    )
    try:
        assert svc.version().startswith("uvicorn/")
        t0 = time.perf_counter()
        r = http(svc.endpoint).connect().request("GET", "/?ms=100")
        assert r.status == 200 and time.perf_counter() - t0 >= 0.1
        pids = [svc.master().pid]
        svc.kill()
        assert alive(pids) == [] and not svc.health().ok
    finally:
        stack.remove("uvicorn-t")


def test_bad_options_name_the_fix():
    with pytest.raises(BadParameter, match="server='nginx': use one of gunicorn, uvicorn"):
        LocalWebServer("x", server="nginx")
    with pytest.raises(BadParameter, match="workers=0: use an integer from 1 to 64"):
        LocalWebServer("x", workers=0)
    with pytest.raises(BadParameter, match="module:attribute"):
        LocalWebServer("x", app="labkit.webapp.wsgi")


def test_labkit_down_reaps_web_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    st = stacks.Stack.private()
    st.add("web", name="g", server="gunicorn", workers=2, provider="local")
    pids = [st.service("g").master().pid, *st.service("g").worker_pids()]
    report = stacks.down()
    assert wait_gone(pids, 10) == [] and pids[0] in report["pids"]
    st.closed = True


def test_killed_kernel_leaves_no_web_orphans():
    """A Python process starts gunicorn (2 workers) and uvicorn, then is SIGKILLed: the watchdog reaps them."""
    code = textwrap.dedent("""
        import json, sys, labkit
        st = labkit.stack("memcached", attach=False)
        g = st.add("web", name="g", server="gunicorn", workers=2, provider="local")
        u = st.add("web", name="u", server="uvicorn", app="labkit.webapp.dependency:app", workers=1, provider="local")
        print(json.dumps([g.master().pid, *g.worker_pids(), u.master().pid]), flush=True)
        sys.stdin.read()
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = json.loads(owner.stdout.readline())
    assert len(alive(pids)) == 4
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert wait_gone(pids) == [], "the watchdog did not reap the web servers of a killed owner"
