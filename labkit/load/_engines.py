"""The two engines that drive the runner's core (``_core.ClientCore``): asyncio and threads.

They differ only where waiting differs (``await`` vs a blocking call, a ticker task vs a monitor
loop, an asyncio queue of connections vs a thread pool); what to do around each operation is
decided by the core, so both honour every option (closed/open loop, duration or op count, stop,
op_timeout, progress, reconnect with backoff) the same way.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from labkit.errors import LabkitError
from labkit.load._core import ClientCore, Context, Progress, RunState, progress_of
from labkit.load.metrics import Recorder
from labkit.load.workload import Op, Workload

__all__ = ["async_engine", "thread_engine"]

_STUCK = "operation still running when the run ended (server paused or overloaded?)"


def _overflow(wl: Workload) -> OverflowError:
    return OverflowError(
        f"more than max_in_flight={wl.max_in_flight} requests waiting: the server cannot keep up with the rate"
    )


# -- asyncio ------------------------------------------------------------------------------------


async def _aconnect(core: ClientCore) -> bool:
    """Open core.ctx.conn, backing off on failure. False when the run is over."""
    ctx, driver = core.ctx, core.driver
    while ctx.conn is None:
        if driver is None:
            ctx.conn = True
            break
        try:
            ctx.conn = await driver.aconnect()
        except LabkitError:
            raise  # a set-up mistake (wrong driver for this op), not a server failure
        except Exception as exc:  # a refused/failed connect is an error the run reports, not a crash
            wait = core.connect_failed(exc, time.perf_counter())
            if wait is None:
                return False
            await asyncio.sleep(wait)
    return True


async def _adrop(driver: Any, ctx: Context) -> None:
    conn, ctx.conn = ctx.conn, None
    if driver is not None and conn not in (None, True):
        try:
            await driver.aclose(conn)
        except Exception:  # closing a broken connection may fail too; nothing to report
            pass


async def _aone(core: ClientCore, op: Op, start_ns: int) -> None:
    """Run one operation and let the core judge the outcome."""
    try:
        coro = core.call(op)
        if core.op_timeout is not None:
            await asyncio.wait_for(coro, core.op_timeout)
        else:
            await coro
    except Exception as exc:
        lost, wait = core.failed(exc, time.perf_counter())
        if lost:
            await _adrop(core.driver, core.ctx)
            await asyncio.sleep(wait)
        else:
            await asyncio.sleep(0)  # an op failing without awaiting must not starve the other tasks
    else:
        core.succeeded(op, start_ns, time.perf_counter_ns())


async def async_engine(
    fn: Callable[..., Awaitable[Any]],
    wl: Workload,
    driver: Any,
    progress: Callable[[Progress], Any] | None,
    interval: float,
    stop: threading.Event | None,
    op_timeout: float | None,
    client_offset: int,
    notes: list[str],
    t0: float,
) -> tuple[list[Recorder], RunState]:
    rec = Recorder(t0, interval)
    state = RunState(wl, t0, stop)
    perf = time.perf_counter

    def take() -> bool:
        return state.take(perf())

    async def closed_client(i: int) -> None:
        core = ClientCore(
            state,
            rec,
            Context(i + client_offset, driver, rec),
            driver,
            fn,
            op_timeout,
            wl.stream(i, client_offset=client_offset),
        )
        try:
            while (op := core.next_op(take)) is not None:
                if core.ctx.conn is None and not await _aconnect(core):
                    return
                await _aone(core, op, time.perf_counter_ns())
                if op.seq % 64 == 63:
                    await asyncio.sleep(0)  # ops that never suspend must not starve the ticker
        finally:
            await _adrop(driver, core.ctx)

    async def open_loop() -> None:
        cores = [
            ClientCore(state, rec, Context(i + client_offset, driver, rec), driver, fn, op_timeout)
            for i in range(wl.clients)
        ]
        idle: asyncio.Queue[ClientCore] = asyncio.Queue()
        for c in cores:
            idle.put_nowait(c)
        rng = np.random.default_rng(None if wl.seed is None else [wl.seed, 10_000 + client_offset])
        stream = wl.stream(0, client_offset=client_offset)
        in_flight: set[asyncio.Task[None]] = set()

        async def serve(op: Op, intended_ns: int) -> None:
            core = await idle.get()
            try:
                if core.ctx.conn is None and not await _aconnect(core):
                    return
                await _aone(core, op, intended_ns)  # latency from the intended arrival: queueing counts
            finally:
                idle.put_nowait(core)

        t0_ns = int(t0 * 1e9)
        try:
            for offset in wl.arrivals(rng):
                due = t0 + offset
                delay = due - perf()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not state.take(max(perf(), due)):
                    break
                if len(in_flight) >= wl.max_in_flight:
                    rec.error(_overflow(wl), perf())
                    continue
                task = asyncio.ensure_future(serve(next(stream), t0_ns + int(offset * 1e9)))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight, timeout=state.left(perf()) + (op_timeout or 0))
        finally:
            for t in list(in_flight):
                t.cancel()
            if in_flight:
                notes.append(f"{len(in_flight)} requests still waiting at the end were cancelled.")
                await asyncio.gather(*in_flight, return_exceptions=True)
            for c in cores:
                await _adrop(driver, c.ctx)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(max(0.0, rec._next_flush - perf()))
            rec.flush(perf())
            if progress is not None:
                progress(progress_of(state, [rec], perf()))

    tick = asyncio.ensure_future(ticker())
    if wl.closed_loop:
        tasks = [asyncio.ensure_future(closed_client(i)) for i in range(wl.clients)]
    else:
        tasks = [asyncio.ensure_future(open_loop())]
    grace = op_timeout if op_timeout is not None else 1.0
    timeout = None if state.deadline == float("inf") else state.left(perf()) + grace
    done, pending = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
    bug = next((t.exception() for t in done if not t.cancelled() and t.exception() is not None), None)
    if bug is not None:
        tick.cancel()
        for t in pending:
            t.cancel()
        await asyncio.gather(tick, *pending, return_exceptions=True)
        raise bug  # a bug in the operation or labkit, not a server failure
    if pending:
        # clients stuck in an operation (paused server): cancel, count each as an error
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for _ in pending:
            rec.error(TimeoutError(_STUCK), perf())
        notes.append(f"{len(pending)} clients were still waiting for the server at the end and were cancelled.")
    tick.cancel()
    await asyncio.gather(tick, return_exceptions=True)
    return [rec], state


# -- threads ------------------------------------------------------------------------------------


def _connect(core: ClientCore) -> bool:
    ctx, driver = core.ctx, core.driver
    while ctx.conn is None:
        if driver is None:
            ctx.conn = True
            break
        try:
            ctx.conn = driver.connect()
        except LabkitError:
            raise  # a set-up mistake (wrong driver for this op), not a server failure
        except Exception as exc:
            now = time.perf_counter()
            wait = core.connect_failed(exc, now)
            core.rec.maybe_flush(now)  # keep the time series honest while the server is away
            if wait is None:
                return False
            time.sleep(wait)
    return True


def _drop(driver: Any, ctx: Context) -> None:
    conn, ctx.conn = ctx.conn, None
    if driver is not None and conn not in (None, True):
        try:
            driver.close(conn)
        except Exception:
            pass


def _one(core: ClientCore, op: Op, start_ns: int) -> None:
    try:
        core.call(op)
    except Exception as exc:
        lost, wait = core.failed(exc, time.perf_counter())
        if lost:
            _drop(core.driver, core.ctx)
            time.sleep(wait)
    else:
        core.succeeded(op, start_ns, time.perf_counter_ns())
    core.rec.maybe_flush(time.perf_counter())


def thread_engine(
    fn: Callable[..., Any],
    wl: Workload,
    driver: Any,
    progress: Callable[[Progress], Any] | None,
    interval: float,
    stop: threading.Event | None,
    op_timeout: float | None,
    client_offset: int,
    notes: list[str],
    t0: float,
) -> tuple[list[Recorder], RunState]:
    state = RunState(wl, t0, stop)
    lock = threading.Lock()  # guards state.take across threads
    perf = time.perf_counter
    bugs: list[BaseException] = []
    recs: list[Recorder] = []  # one per closed-loop client
    worker_recs: list[Recorder] = []  # one per open-loop pool thread
    cores: list[ClientCore] = []

    def take() -> bool:
        with lock:
            return not bugs and state.take(perf())

    def guarded(target: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args: Any) -> None:
            try:
                target(*args)
            except BaseException as exc:  # surfaced in the calling thread after the run
                bugs.append(exc)
                state.stop_event.set()

        return wrapper

    def closed_client(i: int) -> None:
        core = ClientCore(
            state,
            recs[i],
            Context(i + client_offset, driver, recs[i]),
            driver,
            fn,
            op_timeout,
            wl.stream(i, client_offset=client_offset),
        )
        try:
            while (op := core.next_op(take)) is not None:
                if core.ctx.conn is None and not _connect(core):
                    return
                _one(core, op, time.perf_counter_ns())
        finally:
            _drop(driver, core.ctx)

    local = threading.local()

    def open_serve(op: Op, intended_ns: int) -> None:
        core = getattr(local, "core", None)
        if core is None:
            with lock:
                rec = Recorder(t0, interval)
                worker_recs.append(rec)
                core = ClientCore(
                    state, rec, Context(len(worker_recs) - 1 + client_offset, driver, rec), driver, fn, op_timeout
                )
                cores.append(core)
            local.core = core
        if core.ctx.conn is None and not _connect(core):
            return
        _one(core, op, intended_ns)  # latency from the intended arrival: queueing counts

    threads: list[threading.Thread] = []
    queued: list[Any] = []
    pool: ThreadPoolExecutor | None = None
    if wl.closed_loop:
        recs.extend(Recorder(t0, interval) for _ in range(wl.clients))
        threads = [
            threading.Thread(target=guarded(closed_client), args=(i,), daemon=True, name=f"labkit-client-{i}")
            for i in range(wl.clients)
        ]
    else:
        pool = ThreadPoolExecutor(wl.clients, thread_name_prefix="labkit-open")

        def scheduler() -> None:
            rng = np.random.default_rng(None if wl.seed is None else [wl.seed, 10_000 + client_offset])
            stream = wl.stream(0, client_offset=client_offset)
            t0_ns = int(t0 * 1e9)
            for offset in wl.arrivals(rng):
                due = t0 + offset
                delay = due - perf()
                if delay > 0:
                    time.sleep(delay)
                if not take():
                    break
                if len(queued) >= min(1024, wl.max_in_flight):
                    queued[:] = [f for f in queued if not f.done()]
                if len(queued) >= wl.max_in_flight:
                    with lock:
                        if not worker_recs:
                            worker_recs.append(Recorder(t0, interval))
                        worker_recs[0].error(_overflow(wl), perf())
                    continue
                queued.append(pool.submit(guarded(open_serve), next(stream), t0_ns + int(offset * 1e9)))

        threads = [threading.Thread(target=guarded(scheduler), daemon=True, name="labkit-scheduler")]
    for t in threads:
        t.start()

    # monitor: progress callbacks from this thread while the clients run
    end_by = state.deadline + (op_timeout if op_timeout is not None else 1.0)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=min(interval, max(0.01, end_by - perf())))
            if perf() >= end_by:
                break
        if progress is not None:
            progress(progress_of(state, recs + worker_recs, perf()))
        if perf() >= end_by:
            break
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
        dropped = sum(1 for f in queued if f.cancelled())
        if dropped:
            notes.append(
                f"{dropped} requests were still queued at the end and were not served "
                "(the rate is above what the server and connections sustain)."
            )
        grace_end = perf() + (op_timeout if op_timeout is not None else 1.0)
        for t in list(getattr(pool, "_threads", ())):
            t.join(timeout=max(0.0, grace_end - perf()))
        blocked = sum(t.is_alive() for t in getattr(pool, "_threads", ()))
        if blocked:
            notes.append(f"{blocked} connections were still blocked in an operation at the end and were abandoned.")
    stuck = [t for t in threads if t.is_alive()]
    if stuck and wl.closed_loop:
        for t in stuck:
            recs[int(t.name.rsplit("-", 1)[1])].error(TimeoutError(_STUCK), perf())
        notes.append(f"{len(stuck)} clients were still blocked in an operation at the end and were abandoned.")
    if bugs:
        raise bugs[0]
    out = recs + worker_recs or [Recorder(t0, interval)]
    if pool is not None:
        for core in cores:
            _drop(driver, core.ctx)
    return out, state
