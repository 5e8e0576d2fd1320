"""The shared stack, the CLI and orphan reaping: what a learner does from a terminal, and what a killed
kernel leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import psycopg
import pytest

import labkit
from labkit import paths
from labkit.errors import BadParameter, StateError
from labkit.services import stack as stacks


@pytest.fixture(autouse=True, scope="module")
def own_home(tmp_path_factory):
    """`labkit down` stops everything under LABKIT_HOME: these tests get a home of their own so they never stop
    the servers other tests of this run share."""
    home = tmp_path_factory.mktemp("cli-home")
    home.chmod(0o755)
    mp = pytest.MonkeyPatch()
    mp.setenv("LABKIT_HOME", str(home))
    yield home
    stacks.down()
    mp.undo()


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"labkit {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The PIDs still alive once they all exited or `timeout` seconds passed (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


@pytest.fixture
def clean_shared():
    cli("down")
    yield
    cli("down")


def test_up_status_attach_down(clean_shared):
    cli("up", "postgres", "memcached")
    data = json.loads(cli("status", "--json").stdout)["services"]
    by_name = {s["name"]: s for s in data}
    assert set(by_name) == {"postgres", "memcached"}
    for s in data:
        assert s["provider"] == "local" and s["host"] == "127.0.0.1" and s["healthy"] is True and s["shared"]
    assert by_name["postgres"]["dsn"].startswith("postgresql://labkit:")
    pids = [p for s in data for p in s["pids"]]

    # a notebook attaches instead of starting its own servers
    st = labkit.stack("postgres", "memcached")
    assert st.owned == set()
    assert st.endpoint("postgres").port == by_name["postgres"]["port"]
    with psycopg.connect(st.endpoint("postgres").dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    st.close()  # closing an attached stack leaves the shared servers running
    assert alive(pids) == pids

    # `up` again is idempotent
    assert "already running" in cli("up", "postgres").stdout

    out = cli("down").stdout
    assert "stopped" in out
    assert wait_gone(pids, 10) == []
    # running `down` twice is harmless and says so
    assert "Nothing to stop" in cli("down").stdout
    assert json.loads(cli("status", "--json").stdout)["services"] == []


def test_several_postgres_servers_from_the_cli(clean_shared):
    cli("up", "postgres", "--postgres-servers", "2")
    names = {s["name"] for s in json.loads(cli("status", "--json").stdout)["services"]}
    assert names == {"postgres", "postgres-2"}


def test_killed_kernel_leaves_no_orphans():
    """A Python process starts a private stack and is SIGKILLed: its watchdog reaps the servers."""
    code = textwrap.dedent("""
        import json, sys, labkit
        st = labkit.stack("postgres", "memcached", attach=False)
        print(json.dumps([r["pid"] for s in st.services.values() for r in s.pids()]), flush=True)
        sys.stdin.read()
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = json.loads(owner.stdout.readline())
    assert len(alive(pids)) == 2
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert wait_gone(pids, 30) == [], "the watchdog did not reap the servers of a killed owner"


def test_orphans_are_reaped_even_without_the_watchdog():
    """Belt and braces: if the watchdog died too, the next labkit call reaps the orphaned stack."""
    code = textwrap.dedent("""
        import json, sys, labkit, psutil
        from labkit.services._process import proc_ref
        st = labkit.stack("memcached", attach=False)
        st._watchdog.kill(); st._watchdog.wait()
        print(json.dumps([r["pid"] for s in st.services.values() for r in s.pids()]), flush=True)
        sys.stdin.read()
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = json.loads(owner.stdout.readline())
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert alive(pids) == pids  # nothing has reaped them yet
    stopped = stacks.reap_orphans()
    assert set(pids) <= set(stopped)
    assert alive(pids) == []


def test_corrupt_state_file_gives_the_fix_and_down_cleans_it(clean_shared):
    path = stacks.record_path(stacks.SHARED_ID)
    path.write_text("{not json")
    with pytest.raises(StateError, match="labkit down"):
        labkit.stack("memcached")
    res = cli("status")
    assert "corrupt" in res.stdout
    assert "removed corrupt stack record" in cli("down").stdout
    assert not path.exists()


def test_stale_shared_record_is_ignored_and_replaced(clean_shared):
    cli("up", "memcached")
    rec = stacks.read_record(stacks.record_path(stacks.SHARED_ID))
    pid = rec["services"]["memcached"]["pids"][0]["pid"]
    os.kill(pid, signal.SIGKILL)  # the machine "rebooted": the record outlives its servers
    assert wait_gone([pid], 10) == []
    status = json.loads(cli("status", "--json").stdout)["services"]
    assert status[0]["healthy"] is False
    with labkit.stack("memcached") as st:
        assert st.owned == {"memcached"}  # started its own instead of attaching to a dead server
        assert st.service("memcached").health().ok
    cli("up", "memcached")  # `up` replaces the stale record
    status = json.loads(cli("status", "--json").stdout)["services"]
    assert [s["healthy"] for s in status] == [True]


def test_cli_errors_are_clear():
    res = cli("up", "redis", check=False)
    assert res.returncode == 2 and "unknown service 'redis'" in res.stderr
    res = cli("logs", "nosuch", check=False)
    assert res.returncode == 2 and "no running service named 'nosuch'" in res.stderr
    res = cli("up", "postgres", "--postgres-servers", "0", check=False)
    assert res.returncode == 2 and "--postgres-servers=0: use 1 to 8" in res.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["memcached", "--memory-mb", "0"], "memory_mb=0: use 2 to"),
        (["memcached", "--memory-mb", "-5"], "memory_mb=-5: use 2 to"),
        (["memcached", "--memory-mb", "99999999"], "memory_mb=99999999: use 2 to"),
        (["postgres", "cassandra", "--nodes", "us:0"], "us:0"),
        (["postgres", "cassandra", "--nodes", "us:2,,eu"], "us:2,,eu"),
        (["postgres", "memcached", "--nodes", "us:2"], "--nodes applies to cassandra"),
        (["cassandra", "--inter-dc-delay-ms", "-1"], "--inter-dc-delay-ms -1.0: use 0 to 10000"),
        (["cassandra", "--inter-dc-delay-ms", "nan"], "--inter-dc-delay-ms nan"),
        (["postgres", "postgres"], "names a service twice"),
    ],
)
def test_up_checks_every_argument_before_starting_anything(args, message, capsys):
    """Bad values are refused by name with the valid range, before `up` prints "starting" or runs a server."""
    from labkit.cli import main

    before = {p.pid for p in stacks.strays([str(paths.instances_dir())])}
    assert main(["up", *args]) == 2
    out, err = capsys.readouterr()
    assert message in err and "Traceback" not in err, err
    assert "starting" not in out
    assert stacks.all_records() == []
    assert {p.pid for p in stacks.strays([str(paths.instances_dir())])} == before


def test_unknown_service_options_are_refused_by_name():
    with pytest.raises(
        BadParameter,
        match=r"memcached has no option 'memroy_mb': valid options are "
        r"extra_args, image, max_item_mb, memory_mb, port, threads",
    ):
        labkit.stack("memcached", attach=False, memcached={"memroy_mb": 8})
    with labkit.stack("memcached", attach=False) as st:
        with pytest.raises(
            BadParameter,
            match=r"postgres has no option 'memory_mb': valid options are "
            r".*max_connections",
        ):
            st.add("postgres", name="pg-x", memory_mb=8)
        with pytest.raises(BadParameter, match=r"service name '\.\./escape'"):
            st.add("memcached", name="../escape")
        assert set(st.services) == {"memcached"}


def test_doctor_reports_what_this_machine_can_run():
    res = cli("doctor", "--json")
    report = json.loads(res.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert {"python", "docker", "postgres", "memcached", "memory"} <= set(names)
    assert names["postgres"]["ok"] and names["memcached"]["ok"]
    assert report["provider"] in ("local", "docker")
    if not names["docker"]["ok"]:
        assert "local processes" in names["docker"]["fix"]
    text = cli("doctor").stdout
    assert "Ready" in text and "postgres" in text


def test_logs_of_a_running_service(clean_shared):
    cli("up", "postgres")
    out = cli("logs", "postgres", "-n", "20").stdout
    assert "ready to accept connections" in out


def test_doctor_names_the_install_command_per_platform():
    env = {**os.environ, "LABKIT_MEMCACHED_BIN": "/nonexistent/memcached"}
    for platform, command in (
        ("debian", "apt-get install -y memcached"),
        ("macos", "brew install memcached"),
        ("conda", "conda install -c conda-forge memcached"),
        ("colab", "!apt-get -qq install -y memcached"),
        ("binder", "environment.yml"),
    ):
        res = subprocess.run(
            [sys.executable, "-m", "labkit.cli", "doctor", "--platform", platform],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert res.returncode == 1, res.stdout  # memcached is missing, so the machine is not ready
        assert command in res.stdout and "Not ready" in res.stdout, res.stdout
