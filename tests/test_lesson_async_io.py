"""Lesson 08 on real servers: the Postgres task queue (no task lost when a worker is killed mid-task, and the
unsafe worker that loses one), the queue's ranges, and the exercise (async handler) with the reference and
with wrong solutions against the real dependency (uvicorn). The throughput / Little's law claims are not
tested here yet: see the lesson module's check_* helpers."""

from __future__ import annotations

import pytest

from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import async_io as aio
from labkit.lessons import task_queue as tq
from labkit.lessons._solutions import async_io as solution


@pytest.fixture(scope="module")
def servers(stack, pg):
    aio.prepare(pg.dsn)
    sv = aio.start_servers(stack, workers=1)
    yield sv
    for name in ("dependency", "sync", "async"):
        stack.remove(name)


def test_task_queue_loses_nothing_when_a_worker_is_killed(stack, capsys):
    out = tq.kill_mid_task(stack, tasks=20, workers=2, task_ms=50)
    assert out.completed == out.enqueued == 20 and out.attempts >= 21
    tq.check_no_task_lost(out)
    assert capsys.readouterr().out.count("PASS  ") == 2
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
    assert tq.kill_mid_task(stack, tasks=100, workers=6, task_ms=200).lost == 0
    with pytest.raises(BadParameter, match="workers >= 2"):
        tq.kill_mid_task(stack, workers=1)


def test_bad_parameters_name_the_fix(servers):
    with pytest.raises(BadParameter, match="must be > 0"):
        aio.io_compare(servers, dep_ms=0)


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
