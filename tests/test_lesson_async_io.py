"""Lesson 08 on real servers (gunicorn, uvicorn, the slow dependency, Postgres, memcached, task-queue worker
processes): each claim at another setting than the notebook's, each checkpoint failing on a deliberately
broken input, every panel widget at both ends of its range, the exercise with the reference and with wrong
solutions. Short CI-profile runs: the claims are ratios and counts, never this machine's speed."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import async_io as aio
from labkit.lessons import offload
from labkit.lessons import task_queue as tq
from labkit.lessons._solutions import async_io as solution


@pytest.fixture(scope="module")
def servers(stack, pg):
    aio.prepare(pg.dsn)
    sv = aio.start_servers(stack, workers=1)
    yield sv
    for name in ("dependency", "sync", "async"):
        stack.remove(name)


@pytest.fixture(scope="module")
def io(servers):
    # not the notebook's setting: a 100 ms dependency (sync capacity 10 req/s), 2 shorter rounds, another seed
    return aio.io_compare(servers, dep_ms=100, overload=8, duration=1.5, clients=24, rounds=2, seed=3)


def _figures(items):
    figs = [x for x in items if hasattr(x, "savefig")]
    for f in figs:
        plt.close(f)
    return figs


# ------------------------------------------------------------------------------ sync vs async, Little's law
def test_async_serves_more_and_littles_law_holds(io, capsys):
    assert io["sync"].throughput <= 1.2 / 0.1  # one sync worker: at most 1 / 100 ms
    aio.check_async_serves_more(io, factor=5, p99_factor=5)
    aio.check_littles_law(io["async"], tolerance=0.15)
    assert capsys.readouterr().out.count("PASS  ") == 3
    table, *rest = aio.view_io(io)
    assert isinstance(table, pd.DataFrame) and table.shape[0] == 2 and len(_figures(rest)) == 1


def test_io_checkpoints_fail_on_broken_input(io):
    same = {"sync": io["async"], "async": io["async"]}  # "async" compared with itself: no gain
    with pytest.raises(CheckpointFailed, match=r"at least 5x the sync throughput .*: 1 < expected 5"):
        aio.check_async_serves_more(same)
    with pytest.raises(CheckpointFailed, match=r"async p99 is at least 5x lower than sync p99.*: 1 < expected"):
        aio.check_async_serves_more(same, factor=0.5)
    # an overloaded server never reaches a steady state: its queue grows for the whole run
    with pytest.raises(CheckpointFailed, match=r"Little's law L = λW holds within 15% on the sync server"):
        aio.check_littles_law(io["sync"])


def test_io_widget_extremes(servers):
    low = aio.io_compare(servers, dep_ms=10, overload=1.0, duration=1.0, clients=16, rounds=1)
    high = aio.io_compare(servers, dep_ms=200, overload=10.0, duration=1.0, clients=16, rounds=1)
    assert low["async"].result.error_count == 0 and low["async"].rate == pytest.approx(100)
    assert high["async"].rate == pytest.approx(50) and high["async"].throughput > 3 * high["sync"].throughput
    with pytest.raises(BadParameter, match="must be > 0"):
        aio.io_compare(servers, dep_ms=0)
    assert len(high["sync"].extra["rounds"]) == 1


# ------------------------------------------------------------------------------ the CPU-bound counter-case
def test_cpu_bound_async_is_no_faster(servers, capsys):
    cpu = aio.cpu_compare(servers, n=400_000, clients=4, duration=0.5, repeats=3)
    aio.check_cpu_bound(cpu, at_most=1.2)
    assert capsys.readouterr().out.startswith("PASS  ")
    assert aio.view_cpu(cpu).shape == (2, 4)
    faster = {**cpu, "async per cpu s": 2 * cpu["sync per cpu s"]}  # as if async had halved the work
    with pytest.raises(CheckpointFailed, match=r"not more than 20% faster than sync: 2 > expected at most 1.2"):
        aio.check_cpu_bound(faster)


def test_cpu_widget_extremes(servers):
    for n in (10_000, 1_000_000):
        cpu = aio.cpu_compare(servers, n=n, clients=2, duration=0.3, repeats=1)
        assert cpu["sync"] > 0 and cpu["async"] > 0 and cpu["n"] == n
    with pytest.raises(BadParameter, match="must be > 0"):
        aio.cpu_compare(servers, n=0)


# ------------------------------------------------------------------------------ offloading to the task queue
@pytest.fixture(scope="module")
def offloaded(servers):
    # not the notebook's setting, and every widget at its maximum: 500 ms of slow work at 90 % of the web
    # workers' inline capacity, 6 queue workers; 3 web workers, another seed
    return offload.offload_compare(
        servers, task_ms=500, utilization=0.9, queue_workers=6, web_workers=3, duration=2.5, seed=5
    )


def test_offloading_cuts_request_latency_and_every_task_is_done(offloaded, stack, capsys):
    r = offloaded
    assert r.enqueued == r.answered == r.done > 5 and r.left == 0
    assert r.inline.result.percentiles()["p50"] >= r.task_ms
    offload.check_offload(r, factor=5)
    assert capsys.readouterr().out.count("PASS  ") == 3
    table, *rest = offload.view_offload(r)
    assert table.loc[table.index[1], "tasks done"] == r.done and len(_figures(rest)) == 1
    assert not [n for n in stack.services if n == "notify" or n.startswith("offload-worker")]


def test_offload_checkpoints_fail_on_broken_input(offloaded):
    swapped = dataclasses.replace(offloaded, inline=offloaded.queued, queued=offloaded.inline)
    with pytest.raises(CheckpointFailed, match=r"cuts the request's p50 at least 5x: 0\.\d+ < expected"):
        offload.check_offload(swapped)
    slow_queue = dataclasses.replace(offloaded, queued=offloaded.inline)  # queued requests as slow as inline
    with pytest.raises(CheckpointFailed, match=r"cuts the request's p99 at least 2x: 1 < expected 2"):
        offload.check_offload(slow_queue, factor=0.5)
    lost = dataclasses.replace(offloaded, done=offloaded.done - 1, left=1)
    with pytest.raises(CheckpointFailed, match=r"every enqueued task is done .*: 1 > expected at most 0"):
        offload.check_offload(lost)


def test_notify_route_on_both_servers(servers, pg):
    import psycopg

    from labkit.services.web import get_json

    tq.reset(pg.dsn)
    for svc in (servers.sync, servers.asyncio):
        assert get_json(svc.endpoint, "/notify?mode=inline&ms=20&post=7") == {"post": 7, "dependency": 200}
        assert get_json(svc.endpoint, "/notify?mode=queue&post=7")["post"] == 7
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM tasks WHERE payload = 7 AND status = 'queued'").fetchone()[0] == 2


def test_offload_widget_minimum(servers):
    low = offload.offload_compare(servers, task_ms=20, utilization=0.1, queue_workers=1, duration=1.5)
    assert low.done == low.enqueued == low.answered > 0 and low.left == 0  # (the maximum: the fixture above)
    with pytest.raises(BadParameter, match="queue_workers >= 1"):
        offload.offload_compare(servers, queue_workers=0)


# ------------------------------------------------------------------------------ a worker killed mid-task
def test_task_queue_loses_nothing_when_a_worker_is_killed(stack, capsys):
    out = tq.kill_mid_task(stack, tasks=20, workers=2, task_ms=50)
    assert out.completed == out.enqueued == 20 and out.attempts >= 21
    tq.check_no_task_lost(out)
    assert capsys.readouterr().out.count("PASS  ") == 2
    assert tq.view_outcome(out).shape[0] == 1
    assert not [n for n in stack.services if n.startswith("queue-worker")]


def test_unsafe_queue_worker_loses_the_task(stack):
    out = tq.kill_mid_task(stack, tasks=10, workers=2, task_ms=50, unsafe=True)
    assert out.lost == 1
    with pytest.raises(
        CheckpointFailed, match=r"0 tasks lost after killing a queue worker mid-task: 1 > expected at most 0"
    ):
        tq.check_no_task_lost(out)


def test_queue_widget_extremes(stack):
    assert tq.kill_mid_task(stack, tasks=5, workers=2, task_ms=20).lost == 0
    assert tq.kill_mid_task(stack, tasks=60, workers=6, task_ms=200).lost == 0
    with pytest.raises(BadParameter, match="workers >= 2"):
        tq.kill_mid_task(stack, workers=1)


# ------------------------------------------------------------------------------ the exercise
def test_exercise_reference_solution_passes(servers, capsys):
    assert aio.check_converted_handler(solution.handler, servers) is True
    assert "PASS  exercise" in capsys.readouterr().out


def test_exercise_wrong_solutions(servers, capsys):
    async def not_done(dep, post):
        raise NotImplementedError

    assert aio.check_converted_handler(not_done, servers) is None
    assert "Not attempted yet" in capsys.readouterr().out

    def still_sync(dep, post):
        return {"post": post, "dependency": 200}

    with pytest.raises(CheckpointFailed, match="plain function"):
        aio.check_converted_handler(still_sync, servers)

    async def blocks_the_loop(dep, post):
        import time

        from labkit.webapp.httpclient import HttpConnection

        c = HttpConnection(dep.host, dep.port)  # a blocking call inside async def
        try:
            r = c.request("GET", "/?ms=50")
        finally:
            c.close()
        time.sleep(0)
        return {"post": post, "dependency": r.status}

    with pytest.raises(CheckpointFailed, match="one at a time"):
        aio.check_converted_handler(blocks_the_loop, servers, duration=1.0)
