"""The local provider against the real servers: Postgres and memcached processes on this machine."""

from __future__ import annotations

import os
import socket
import time

import psutil
import psycopg
import pytest
from pymemcache.client.base import Client

import labkit
from labkit.errors import BadParameter, BinaryNotFound, PortInUse, UnknownService
from labkit.services import memcached as mcmod
from labkit.services.memcached import LocalMemcached
from labkit.services.postgres import LocalPostgres


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_postgres_starts_answers_reports_version_and_stops():
    pg = LocalPostgres("pg-basic")
    ep = pg.start()
    try:
        assert ep.host == "127.0.0.1" and ep.port not in (5432, 0)
        assert ep.password and len(ep.password) >= 16
        with psycopg.connect(ep.dsn) as conn:
            conn.execute("CREATE TABLE t (id int primary key, v text)")
            conn.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g")
            assert conn.execute("SELECT count(*), max(id) FROM t").fetchone() == (1000, 1000)
            server_version = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
        assert pg.version() == server_version and pg.version()[0].isdigit()
        assert pg.health().ok
        # password auth is enforced: a wrong password is refused
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(ep.dsn.replace(ep.password, "wrong"), connect_timeout=3)
        pids = [r["pid"] for r in pg.pids()]
        children = [c.pid for c in psutil.Process(pids[0]).children(recursive=True)]
        if os.geteuid() == 0:  # Postgres refuses root: labkit runs it as an unprivileged user
            assert psutil.Process(pids[0]).uids().real != 0
    finally:
        pg.stop()
        pg.remove_data()
    deadline = time.monotonic() + 10  # backends exit just after the postmaster: wait for it, with a deadline
    while alive(pids + children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(pids + children) == []
    assert not pg.health().ok


def test_memcached_one_megabyte_value_memory_size_and_stop():
    mc = LocalMemcached("mc-basic", memory_mb=16)
    ep = mc.start()
    try:
        client = Client(ep.address, connect_timeout=2, timeout=5)
        big = os.urandom(1_000_000)
        assert client.set("big", big)
        assert client.get("big") == big
        assert client.set("k", b"v") and client.get("k") == b"v"
        stats = mcmod.query_stats(ep)
        assert int(stats["limit_maxbytes"]) == 16 * 2**20
        assert mc.version() == stats["version"]
        pids = [r["pid"] for r in mc.pids()]
        client.close()
    finally:
        mc.stop()
    assert alive(pids) == []


def test_two_stacks_side_by_side_have_distinct_ports():
    with (
        labkit.stack("postgres", "memcached", attach=False) as a,
        labkit.stack("postgres", "memcached", attach=False) as b,
    ):
        ports = {
            a.endpoint("postgres").port,
            a.endpoint("memcached").port,
            b.endpoint("postgres").port,
            b.endpoint("memcached").port,
        }
        assert len(ports) == 4
        for st, value in ((a, b"from-a"), (b, b"from-b")):
            Client(st.endpoint("memcached").address).set("who", value, noreply=False)
            with psycopg.connect(st.endpoint("postgres").dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE who (v text)")
                conn.execute("INSERT INTO who VALUES (%s)", (value.decode(),))
        assert Client(a.endpoint("memcached").address).get("who") == b"from-a"
        with psycopg.connect(b.endpoint("postgres").dsn) as conn:
            assert conn.execute("SELECT v FROM who").fetchone()[0] == "from-b"
        pids = [r["pid"] for st in (a, b) for s in st.services.values() for r in s.pids()]
    assert alive(pids) == []


def test_several_postgres_servers_in_one_stack():
    with labkit.stack("postgres", attach=False) as st:
        st.add("postgres", name="shard-2")
        st.add("postgres", name="shard-3")
        answers = set()
        for name in ("postgres", "shard-2", "shard-3"):
            with psycopg.connect(st.endpoint(name).dsn) as conn:
                answers.add(conn.execute("SELECT inet_server_port()").fetchone()[0])
        assert len(answers) == 3
        with pytest.raises(UnknownService, match="already has a service named 'shard-2'"):
            st.add("postgres", name="shard-2")


def test_new_servers_are_copies_of_one_data_template_each_with_its_own_password_and_data():
    """A cold start copies a cached initdb result instead of running initdb (issue 18); the copies must not
    share anything: not the template's password, not each other's tables, and the template stays pristine."""
    from labkit.services.postgres import data_template

    with labkit.stack("postgres", attach=False) as st:
        st.add("postgres", name="copy-2")
        tmpl = data_template(LocalPostgres("probe").run_as)
        template_password = (tmpl / "password").read_text().strip()
        a, b = st.endpoint("postgres"), st.endpoint("copy-2")
        assert template_password not in (a.password, b.password) and a.password != b.password
        for ep in (a, b):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(ep.dsn.replace(ep.password, template_password), connect_timeout=3)
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_a (id int)")
        with psycopg.connect(b.dsn) as conn:
            assert conn.execute("SELECT to_regclass('only_in_a')").fetchone()[0] is None
            assert conn.execute("SELECT current_database()").fetchone()[0] == "labkit"
    built = sorted(p.name for p in tmpl.parent.iterdir())
    assert tmpl.name in built and not [n for n in built if n.startswith(".build-")], built
    assert not (tmpl / "data" / "postmaster.pid").exists()


def test_sigkilled_server_is_unhealthy_and_restarts_with_its_data():
    with labkit.stack("postgres", "memcached", attach=False) as st:
        pg = st.service("postgres")
        with psycopg.connect(pg.endpoint.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        old = [r["pid"] for r in pg.pids()]
        pg.kill()
        assert not pg.health().ok
        assert alive(old) == []
        st.restart("postgres")
        assert pg.health().ok
        with psycopg.connect(pg.endpoint.dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone()[0] == 42  # committed data survives the crash
        mc = st.service("memcached")
        mc.kill()
        assert not mc.health().ok
        st.restart("memcached")
        assert mc.health().ok
        # the record follows the restart, so `labkit down` would find the new PIDs
        rec = labkit.services.stack.read_record(st.path)
        assert [r["pid"] for r in rec["services"]["postgres"]["pids"]] == [r["pid"] for r in pg.pids()]


def test_pause_makes_memcached_silent_until_resume():
    with LocalMemcached("mc-pause", memory_mb=8) as mc:
        client = Client(mc.endpoint.address, connect_timeout=1, timeout=0.5)
        assert client.set("k", b"v", noreply=False)
        mc.pause()
        try:
            with pytest.raises((socket.timeout, TimeoutError, OSError)):
                Client(mc.endpoint.address, connect_timeout=0.5, timeout=0.5).get("k")
            assert not mc.health().ok
        finally:
            mc.resume()
        assert Client(mc.endpoint.address, timeout=2).get("k") == b"v"


def test_unknown_service_names_the_choices():
    with pytest.raises(UnknownService, match="labkit runs postgres, memcached, cassandra"):
        labkit.stack("postgress")


def test_unknown_provider_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LABKIT_PROVIDER", "kubernetes")
    with pytest.raises(
        BadParameter, match="LABKIT_PROVIDER='kubernetes' is not valid: use one of local, docker, external"
    ):
        labkit.stack("memcached")


def test_missing_binary_names_the_install_command(monkeypatch):
    monkeypatch.setenv("LABKIT_MEMCACHED_BIN", "/nonexistent/memcached")
    with pytest.raises(BinaryNotFound, match="LABKIT_MEMCACHED_BIN"):
        LocalMemcached("mc-missing").start()
    monkeypatch.delenv("LABKIT_MEMCACHED_BIN")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(
        mcmod,
        "find_binary",
        lambda name, globs, hint: __import__("labkit.services._process", fromlist=["x"]).find_binary(name, [], hint),
    )
    with pytest.raises(BinaryNotFound, match="apt-get install memcached"):
        LocalMemcached("mc-missing").start()


def test_port_in_use_by_another_program_is_refused_with_the_fix():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(PortInUse, match="Leave the port out"):
            LocalMemcached("mc-port", port=port).start()
        with pytest.raises(PortInUse, match=str(port)):
            LocalPostgres("pg-port", port=port).start()
    finally:
        holder.close()


def test_bad_options_are_refused():
    with pytest.raises(labkit.errors.BadParameter, match="memory_mb"):
        LocalMemcached("mc-bad", memory_mb=0)
    with pytest.raises(UnknownService, match="options given for cassandra"):
        labkit.stack("postgres", cassandra={"nodes": "us:1"})
