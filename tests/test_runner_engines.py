"""One test matrix for the runner's two engines: every option runs on asyncio AND on threads.

The operations here sleep or raise on purpose (they are the lesson's code, not a server); the
reconnect case uses a real memcached that is killed mid-run. Bounds are about counts and about
time the operations themselves spend sleeping, never about this machine's speed.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from labkit.errors import BadParameter
from labkit.load import OperationBug, Workload, drivers, run

ENGINES = ["asyncio", "threads"]


def make_op(engine: str, body):
    """The same operation as a coroutine function (asyncio engine) or a plain one (threads)."""
    if engine == "asyncio":

        async def op(ctx, o):
            delay = body(ctx, o)
            if delay:
                await asyncio.sleep(delay)
    else:

        def op(ctx, o):
            delay = body(ctx, o)
            if delay:
                time.sleep(delay)

    return op


@pytest.mark.parametrize("engine", ENGINES)
def test_closed_loop_duration_counts_every_op(engine):
    seen = []
    res = run(make_op(engine, lambda ctx, o: seen.append(o.seq) or 0.002), clients=3, duration=0.6)
    assert res.error_count == 0 and res.ops == len(seen) > 0, res.summary()
    assert res.stopped == "duration"
    # each client sleeps 2 ms per op: at most 3 * 0.6 / 0.002 ops fit in the run
    assert res.ops <= 3 * 0.6 / 0.002 + 3


@pytest.mark.parametrize("engine", ENGINES)
def test_op_count_limit_is_exact(engine):
    res = run(make_op(engine, lambda ctx, o: 0), clients=4, ops=137)
    assert res.ops == 137 and res.stopped == "ops", res.summary()


@pytest.mark.parametrize("engine", ENGINES)
def test_open_loop_keeps_the_rate(engine):
    res = run(make_op(engine, lambda ctx, o: 0.001), clients=4, rate=200, duration=1.0, seed=7)
    assert res.error_count == 0, res.summary()
    assert 120 <= res.ops <= 280, res.summary()


@pytest.mark.parametrize("engine", ENGINES)
def test_stop_event_ends_the_run_early(engine):
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    res = run(make_op(engine, lambda ctx, o: 0.005), clients=2, duration=10, stop=stop)
    assert time.monotonic() - t0 < 3, "the Stop event did not end the run"
    assert res.stopped == "stopped" and res.ops > 0, res.summary()


@pytest.mark.parametrize("engine", ENGINES)
def test_op_timeout_counts_slow_operations_as_timeouts(engine):
    # every 5th op takes 0.3 s, the others 1 ms; op_timeout=0.1 s
    res = run(make_op(engine, lambda ctx, o: 0.3 if o.seq % 5 == 4 else 0.001), clients=1, ops=20, op_timeout=0.1)
    assert res.errors.get("TimeoutError") == 4, res.summary()
    assert res.ops == 16, res.summary()
    assert res.percentiles()["max"] < 100, "a timed-out op's latency leaked into the histogram"


@pytest.mark.parametrize("engine", ENGINES)
def test_progress_is_reported_with_rows(engine):
    calls = []
    run(make_op(engine, lambda ctx, o: 0.002), clients=2, duration=0.8, interval=0.2, progress=calls.append)
    assert len(calls) >= 2, calls
    assert calls[-1].ops > 0 and 0 < calls[-1].fraction <= 1
    assert calls[-1].rows and calls[-1].rows[-1]["seconds"] > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_server_answers_are_counted_not_raised(engine):
    class Refused(Exception):
        pass

    def body(ctx, o):
        if o.seq % 2:
            raise Refused("the server said no")
        ctx.count("answered")
        return 0

    res = run(make_op(engine, body), clients=2, ops=40)
    assert set(res.errors) == {"Refused"} and res.errors["Refused"] + res.ops == 40, res.summary()
    assert res.errors["Refused"] >= 10 and res.counters["answered"] == res.ops >= 10
    assert res.disconnects == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_bug_in_the_operation_raises_at_once(engine):
    def body(ctx, o):
        return o.no_such_field

    t0 = time.monotonic()
    with pytest.raises(OperationBug, match="no_such_field"):
        run(make_op(engine, body), clients=2, duration=5)
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("engine", ENGINES)
def test_seed_reproduces_the_keys(engine):
    def keys():
        got = []
        run(make_op(engine, lambda ctx, o: got.append((ctx.client, o.key)) or 0), clients=1, ops=50, seed=3)
        return got

    assert keys() == keys()


@pytest.mark.parametrize("engine", ENGINES)
def test_worker_processes_merge_their_counts(engine):
    res = run(make_op(engine, lambda ctx, o: ctx.count("done") or 0.001), clients=4, duration=0.6, processes=2)
    assert res.params["processes"] == 2
    assert res.ops > 0 and res.counters["done"] == res.ops, res.summary()


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_options_are_refused_on_both(engine):
    op = make_op(engine, lambda ctx, o: 0)
    with pytest.raises(BadParameter, match="processes"):
        run(op, clients=1, ops=1, processes=0)
    with pytest.raises(BadParameter, match="interval"):
        run(op, clients=1, ops=1, interval=-1)


@pytest.mark.parametrize("asynchronous", [True, False], ids=ENGINES)
def test_killed_server_is_counted_and_the_run_ends_on_time(stack, asynchronous):
    """A real memcached killed mid-run: both engines count the outage with backoff and end on time."""
    svc = stack.add("memcached", name=f"mc-engine-{int(asynchronous)}")
    try:
        drv = drivers.memcached(svc.endpoint, client="meta" if asynchronous else "pymemcache")
        threading.Timer(0.6, svc.kill).start()
        t0 = time.monotonic()
        res = run(drv.get_set_op(asynchronous=asynchronous), Workload(clients=3, duration=1.8))
        assert time.monotonic() - t0 < 5, "the run did not end on time after the server died"
    finally:
        stack.remove(svc.name)
    assert res.ops > 0 and res.error_count > 0, res.summary()
    assert res.disconnects > 0
    assert res.error_count < 1000, f"no backoff: {res.error_count} errors in a 1.2 s outage"
    assert res.stopped == "server failure", res.summary()
