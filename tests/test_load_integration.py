"""The load runner and drivers against real servers: short runs return throughput and latencies
without errors; a server killed mid-run shows up as counted errors and a clean end that says why."""

from __future__ import annotations

import threading
import time

import pytest

import labkit
from labkit.load import HotSpot, Uniform, Workload, Zipf, drivers, run
from labkit.load.server_stats import MemcachedStats, PostgresStats

SECONDS = 1.5


def _assert_clean(res, min_ops: int = 50) -> None:
    assert res.error_count == 0, res.summary()
    assert res.ops >= min_ops and res.throughput > 0, res.summary()
    p = res.percentiles()
    assert 0 < p["p50"] <= p["p99"] <= p["max"], p
    assert res.to_frame()["ops"].sum() == res.ops


# -- Postgres ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_table(pg):
    import psycopg

    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS load_kv (k int PRIMARY KEY, v text)")
        conn.execute(
            "INSERT INTO load_kv SELECT g, md5(g::text) FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING"
        )
    return pg


def test_postgres_async_and_threads(pg_table) -> None:
    drv = drivers.postgres(pg_table)
    watch = PostgresStats(pg_table)
    res = run(
        drv.query_op("SELECT v FROM load_kv WHERE k = %s"),
        Workload(keys=Zipf(1000, 0.99), clients=4, duration=SECONDS),
        watch=[watch],
    )
    _assert_clean(res)
    # what the server saw: at least as many commits as the client counted
    assert res.server["postgres"]["xact_commit"] >= res.ops
    sync = run(
        drv.query_op("SELECT v FROM load_kv WHERE k = %s", asynchronous=False),
        Workload(keys=Uniform(1000), clients=3, duration=SECONDS),
    )
    _assert_clean(sync)


def test_postgres_lesson_counter_and_writes(pg_table) -> None:
    async def op(ctx, op):
        if op.kind == "write":
            await ctx.conn.execute("UPDATE load_kv SET v = %s WHERE k = %s", (op.value.decode()[:8], op.rank + 1))
        else:
            await (await ctx.conn.execute("SELECT v FROM load_kv WHERE k = %s", (op.rank + 1,))).fetchone()
        ctx.count("db_queries")

    res = run(
        op,
        Workload(
            keys=HotSpot(1000, 0.1, 0.9), mix={"read": 0.8, "write": 0.2}, clients=4, duration=SECONDS, value_size=8
        ),
        driver=drivers.postgres(pg_table),
    )
    _assert_clean(res)
    assert res.counters["db_queries"] == res.ops
    assert set(res.hists) == {"read", "write"}


def test_open_loop_postgres_reaches_target_rate(pg_table) -> None:
    rate = 300  # far below what any machine serves: the run should keep up
    res = run(
        drivers.postgres(pg_table).query_op("SELECT v FROM load_kv WHERE k = %s"),
        Workload(clients=4, rate=rate, duration=2.0),
    )
    assert res.error_count == 0, res.summary()
    assert 0.7 * rate <= res.throughput <= 1.3 * rate, res.summary()


# -- memcached --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "client, asynchronous, share",
    [("meta", True, None), ("meta", True, 2), ("meta", False, None), ("pymemcache", False, None)],
)
def test_memcached_get_set(mc, client: str, asynchronous: bool, share: int | None) -> None:
    drv = drivers.memcached(mc, client=client, share=share)
    res = run(
        drv.get_set_op(asynchronous=asynchronous),
        Workload(
            keys=Zipf(500, 1.0),
            mix={"get": 0.9, "set": 0.1},
            clients=4,
            duration=SECONDS,
            key_format=f"it-{client}-{asynchronous}-{share}:{{}}",
        ),
        watch=MemcachedStats(mc),
    )
    _assert_clean(res)
    gets = res.counters["hits"] + res.counters["misses"]
    assert gets == res.hists["get"].get_total_count()
    # the server counted (at least) the gets the client made
    assert res.server["memcached"]["cmd_get"] >= gets


def test_wrong_driver_for_the_op_is_a_clear_error(mc) -> None:
    from labkit.errors import BadParameter

    async def op(ctx, op):
        ctx.conn.get(op.key)

    with pytest.raises(BadParameter, match="plain function"):
        run(op, Workload(clients=2, duration=1), driver=drivers.memcached(mc, client="pymemcache"))


def test_memcached_multiprocess(mc) -> None:
    drv = drivers.memcached(mc, share=1)  # each worker pipelines its clients over one connection
    res = run(drv.get_set_op(), Workload(clients=4, duration=SECONDS, mix={"get": 0.5, "set": 0.5}), processes=2)
    _assert_clean(res)
    assert res.params["processes"] == 2


# -- failures ---------------------------------------------------------------------------------


def _kill_later(service, after: float) -> threading.Timer:
    t = threading.Timer(after, service.kill)
    t.start()
    return t


@pytest.mark.parametrize("share", [None, 2])
def test_memcached_killed_mid_run_is_counted(stack, share) -> None:
    svc = stack.add("memcached", name="mc-victim")
    try:
        drv = drivers.memcached(svc.endpoint, share=share)
        _kill_later(svc, 0.8)
        t0 = time.monotonic()
        res = run(drv.get_set_op(), Workload(clients=4, duration=2.0))
        assert time.monotonic() - t0 < 5, "the run did not end on time after the server died"
    finally:
        stack.remove("mc-victim")
    assert res.ops > 0 and res.error_count > 0, res.summary()
    assert res.stopped == "server failure", res.summary()
    assert 0.5 < res.first_error_at < 1.5
    assert any("stopped answering" in n for n in res.notes), res.notes
    # errors are spread over the outage with backoff, not a hot loop of millions
    assert res.error_count < 1000, res.summary()


def test_postgres_killed_mid_run_is_counted(stack) -> None:
    svc = stack.add("postgres", name="pg-victim")
    try:
        drv = drivers.postgres(svc.endpoint)
        _kill_later(svc, 1.0)
        res = run(drv.query_op("SELECT %s::int", asynchronous=False), Workload(clients=3, duration=2.5))
    finally:
        stack.remove("pg-victim")
    assert res.ops > 0 and res.error_count > 0, res.summary()
    assert res.stopped == "server failure", res.summary()
    frame = res.to_frame()
    assert frame[frame["t"] >= 1.5]["ops"].sum() == 0 and frame["errors"].sum() == res.error_count


def test_paused_server_ends_on_time(stack) -> None:
    svc = stack.add("memcached", name="mc-paused")
    try:
        drv = drivers.memcached(svc.endpoint, timeout=30)
        threading.Timer(0.5, svc.pause).start()
        t0 = time.monotonic()
        res = run(drv.get_set_op(), Workload(clients=3, duration=1.5))
        elapsed = time.monotonic() - t0
        svc.resume()
    finally:
        stack.remove("mc-paused")
    assert elapsed < 4, f"run took {elapsed:.1f} s with a paused server"
    assert res.ops > 0 and res.errors.get("TimeoutError") == 3, res.summary()
    assert any("still waiting" in n for n in res.notes), res.notes


# -- Cassandra (single node) ------------------------------------------------------------------


def test_cassandra_consistency_per_request() -> None:
    from labkit.services import cassandra_jars_version

    if cassandra_jars_version() is None:
        # CI fetches them first (`labkit fetch cassandra`); a fresh checkout may not have them yet
        pytest.skip("Cassandra jars not fetched: run `labkit fetch cassandra` (or set LABKIT_CACHE)")
    with labkit.stack("cassandra", attach=True) as st, drivers.cassandra(st, consistency="ONE") as cd:
        s = cd.connect()
        s.session.execute(
            "CREATE KEYSPACE IF NOT EXISTS loadtest WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        s.session.execute("CREATE TABLE IF NOT EXISTS loadtest.kv (k text PRIMARY KEY, v blob)")
        write = cd.query_op(
            "INSERT INTO loadtest.kv (k, v) VALUES (?, ?)", lambda op: (op.key, op.value), consistency="ONE"
        )
        res = run(write, Workload(keys=Uniform(200), mix={"write": 1}, clients=4, duration=SECONDS))
        _assert_clean(res)
        read = cd.query_op("SELECT v FROM loadtest.kv WHERE k = ?", consistency="QUORUM")
        res = run(read, Workload(keys=Uniform(200), clients=4, duration=SECONDS))
        _assert_clean(res)


def test_postgres_pq_engine_returns_rows_and_reports_sql_errors(pg_table) -> None:
    """The lean engine used for throughput runs: right rows, blocking and async, and SQL errors counted."""
    drv = drivers.postgres(pg_table, engine="pq")
    seen: list[tuple] = []

    async def check(ctx, op):
        rows = await ctx.conn.fetch("SELECT k, v FROM load_kv WHERE k = %s AND v LIKE %s", (op.rank + 1, "%"))
        assert rows and int(rows[0][0]) == op.rank + 1
        seen.append(rows[0])

    res = run(check, Workload(keys=Uniform(1000), clients=2, ops=200), driver=drv)
    assert res.error_count == 0 and res.ops == 200 and len(seen) == 200, res.summary()
    sync = run(
        drv.query_op("SELECT v FROM load_kv WHERE k = %s", asynchronous=False), Workload(clients=2, duration=0.5)
    )
    _assert_clean(sync, min_ops=10)
    bad = run(drv.query_op("SELECT nope FROM load_kv WHERE k = %s"), Workload(clients=2, ops=20))
    assert bad.ops == 0 and bad.errors == {"UndefinedColumn": 20}, bad.summary()
    # the hot path's shortcuts: libpq's status codes as plain ints, and the one-column fast path (NULLs too)
    from psycopg import pq

    from labkit.load import postgres_driver

    assert (postgres_driver._TUPLES_OK, postgres_driver._FATAL_ERROR) == (
        pq.ExecStatus.TUPLES_OK,
        pq.ExecStatus.FATAL_ERROR,
    )
    shapes: list[list[tuple]] = []

    async def shapes_op(ctx, op):
        shapes.append(await ctx.conn.fetch("SELECT x FROM (VALUES (1), (NULL), (3)) t(x) ORDER BY x NULLS LAST"))
        shapes.append(await ctx.conn.fetch("SELECT %s::int, NULL::text, 'é'", (op.rank,)))
        shapes.append(await ctx.conn.fetch("SELECT 1 WHERE false"))

    assert run(shapes_op, Workload(keys=Uniform(1), clients=1, ops=1), driver=drv).error_count == 0
    assert shapes == [[("1",), ("3",), (None,)], [("0", None, "é")], []]
