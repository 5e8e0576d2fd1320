"""Run a lesson's operation under load: concurrency, pacing, timing, error accounting.

The lesson supplies the operation, a plain function or a coroutine function taking ``(ctx, op)``
(or just ``(op)``): ``op`` says what to do (kind, key, value), ``ctx.conn`` is this client's
connection from the driver, ``ctx.count("db_queries")`` adds to a lesson counter. labkit supplies
the rest::

    async def read(ctx, op):
        await ctx.conn.get(op.key)
    result = run(read, Workload(keys=Zipf(1000, 1.1), clients=16, duration=5), driver=memcached(st))
    print(result.summary())

Failures are data, not crashes: an exception from the operation is counted by type, the client
reconnects (with backoff, so a dead server does not spin a core), the run still ends on time, and
the result's ``notes`` say what happened.
"""
from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np

from labkit.errors import BadParameter, LabkitError
from labkit.load.metrics import Recorder, RunResult
from labkit.load.workload import Op, Workload

__all__ = ["run", "arun", "sweep", "Context", "Progress", "OperationBug"]

_BACKOFF_MIN, _BACKOFF_MAX = 0.02, 0.5
# Bugs in the operation, not server behaviour: raise at once instead of counting 100k of them.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, ImportError, SyntaxError)


class OperationBug(Exception):
    """Wraps a programming error raised by the lesson's operation (see __cause__)."""


@dataclass
class Progress:
    """Handed to the progress callback about once per interval."""

    elapsed: float
    fraction: float          # 0..1 of duration or op count
    ops: int
    errors: int
    row: dict[str, Any] | None  # the latest completed interval (ops, p50_ms, p99_ms, ...)
    rows: list[dict[str, Any]]


class Context:
    """Per-client state given to the operation: ``conn``, ``client`` id, ``driver``, ``count()``."""

    __slots__ = ("conn", "client", "driver", "_rec", "state")

    def __init__(self, client: int, driver: Any, rec: Recorder) -> None:
        self.conn: Any = None
        self.client = client
        self.driver = driver
        self._rec = rec
        self.state: dict[str, Any] = {}  # lesson scratch space that lives as long as the client

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a lesson-defined counter (e.g. 'db_queries', 'cache_hits')."""
        self._rec.count(name, n)


def _check_bug(exc: BaseException, fn: Callable[..., Any]) -> None:
    if isinstance(exc, _PROGRAMMING_ERRORS):
        raise OperationBug(f"the operation {getattr(fn, '__name__', fn)!r} raised {type(exc).__name__}: {exc} "
                           "-- a bug in the operation's code, not a server failure; fix it and run again") from exc


def _arity(fn: Callable[..., Any]) -> int:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return 2
    if len(params) not in (1, 2):
        raise BadParameter(f"the operation {getattr(fn, '__name__', fn)!r} takes {len(params)} required "
                           "arguments: define it as fn(op) or fn(ctx, op)")
    return len(params)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class _Shared:
    """State shared by the clients of one run: stop conditions and counts for progress."""

    def __init__(self, wl: Workload, t0: float, stop: threading.Event | None) -> None:
        self.deadline = t0 + wl.duration if wl.duration is not None else float("inf")
        self.limit = wl.ops if wl.ops is not None else None
        self.issued = 0
        self.t0 = t0
        self.stop_event = stop or threading.Event()
        self.stopped_by = "duration" if wl.duration is not None else "ops"

    def take(self, now: float) -> bool:
        """May one more op start?"""
        if now >= self.deadline or self.stop_event.is_set():
            return False
        if self.limit is not None:
            if self.issued >= self.limit:
                self.stopped_by = "ops"
                return False
        self.issued += 1
        return True

    def fraction(self, now: float, duration: float | None) -> float:
        parts = []
        if duration:
            parts.append((now - self.t0) / duration)
        if self.limit:
            parts.append(self.issued / self.limit)
        return max(0.0, min(1.0, max(parts) if parts else 0.0))


def _progress(shared: _Shared, wl: Workload, recs: list[Recorder], now: float) -> Progress:
    rows = []
    for r in recs:
        rows.extend(r.rows)
    ops = sum(int(r.get("ops", 0)) for r in rows)
    errors = sum(sum(r.errors.values()) for r in recs)
    last = recs[0].live_row() if len(recs) == 1 else (rows[-1] if rows else None)
    return Progress(now - shared.t0, shared.fraction(now, wl.duration), ops, errors, last, rows)


# -- asyncio engine ---------------------------------------------------------------------------

async def _aconnect(driver: Any, ctx: Context, shared: _Shared, rec: Recorder) -> bool:
    """Open ctx.conn; on failure count the error and back off. False when the run is over."""
    backoff = _BACKOFF_MIN
    while ctx.conn is None:
        if driver is None:
            ctx.conn = True
            break
        try:
            ctx.conn = await driver.aconnect()
        except LabkitError:
            raise  # a set-up mistake (wrong driver for this op), not a server failure
        except Exception as exc:  # a refused/failed connect is an error the run reports, not a crash
            now = time.perf_counter()
            rec.error(exc, now, disconnect=True)
            if now >= shared.deadline or shared.stop_event.is_set():
                return False
            await asyncio.sleep(min(backoff, shared.deadline - now))
            backoff = min(_BACKOFF_MAX, backoff * 2)
    return True


async def _adrop(driver: Any, ctx: Context) -> None:
    conn, ctx.conn = ctx.conn, None
    if driver is not None and conn not in (None, True):
        try:
            await driver.aclose(conn)
        except Exception:  # closing a broken connection may fail too; nothing to report
            pass


async def _async_engine(fn: Callable[..., Awaitable[Any]], wl: Workload, driver: Any,
                        progress: Callable[[Progress], Any] | None, interval: float,
                        stop: threading.Event | None, op_timeout: float | None,
                        client_offset: int, notes: list[str], t0: float | None = None) -> list[Recorder]:
    arity = _arity(fn)
    t0 = t0 if t0 is not None else time.perf_counter()
    rec = Recorder(t0, interval)
    shared = _Shared(wl, t0, stop)
    perf_ns = time.perf_counter_ns
    perf = time.perf_counter

    async def call(ctx: Context, op: Op) -> None:
        coro = fn(ctx, op) if arity == 2 else fn(op)
        if op_timeout is not None:
            await asyncio.wait_for(coro, op_timeout)
        else:
            await coro

    async def failed(ctx: Context, exc: BaseException, backoff: float) -> float:
        _check_bug(exc, fn)
        lost = isinstance(exc, (OSError, asyncio.TimeoutError)) or (driver is not None and driver.is_disconnect(exc))
        rec.error(exc, perf(), disconnect=lost)
        if lost:
            await _adrop(driver, ctx)
            await asyncio.sleep(max(0.0, min(backoff, shared.deadline - perf())))
            return min(_BACKOFF_MAX, backoff * 2)
        await asyncio.sleep(0)  # an op failing without awaiting must not starve the other tasks
        return backoff

    async def closed_client(i: int) -> None:
        ctx = Context(i + client_offset, driver, rec)
        stream = wl.stream(i, client_offset=client_offset)
        backoff = _BACKOFF_MIN
        try:
            while shared.take(perf()):
                if ctx.conn is None and not await _aconnect(driver, ctx, shared, rec):
                    return
                op = next(stream)
                start = perf_ns()
                try:
                    await call(ctx, op)
                except Exception as exc:
                    backoff = await failed(ctx, exc, backoff)
                else:
                    rec.ok(op.kind, perf_ns() - start)
                    backoff = _BACKOFF_MIN
                    if op.seq % 64 == 63:
                        await asyncio.sleep(0)  # ops that never suspend must not starve the ticker
        finally:
            await _adrop(driver, ctx)

    async def open_loop() -> None:
        pool: asyncio.Queue[Context] = asyncio.Queue()
        ctxs = [Context(i + client_offset, driver, rec) for i in range(wl.clients)]
        for c in ctxs:
            pool.put_nowait(c)
        rng = np.random.default_rng(None if wl.seed is None else [wl.seed, 10_000 + client_offset])
        stream = wl.stream(0, client_offset=client_offset)
        in_flight: set[asyncio.Task[None]] = set()
        backoff = [_BACKOFF_MIN]

        async def serve(op: Op, intended_ns: int) -> None:
            ctx = await pool.get()
            try:
                if ctx.conn is None and not await _aconnect(driver, ctx, shared, rec):
                    return
                try:
                    await call(ctx, op)
                except Exception as exc:
                    backoff[0] = await failed(ctx, exc, backoff[0])
                else:
                    # latency from the intended arrival: queueing delay counts, as users feel it
                    rec.ok(op.kind, perf_ns() - intended_ns)
                    backoff[0] = _BACKOFF_MIN
            finally:
                pool.put_nowait(ctx)

        t0_ns = int(t0 * 1e9)
        try:
            for offset in wl.arrivals(rng):
                due = t0 + offset
                delay = due - perf()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not shared.take(max(perf(), due)):
                    break
                if len(in_flight) >= wl.max_in_flight:
                    rec.error(OverflowError(f"more than max_in_flight={wl.max_in_flight} requests "
                                            "waiting: the server cannot keep up with the rate"), perf())
                    continue
                task = asyncio.ensure_future(serve(next(stream), t0_ns + int(offset * 1e9)))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight, timeout=max(0.0, shared.deadline - perf()) + (op_timeout or 0))
        finally:
            for t in list(in_flight):
                t.cancel()
            if in_flight:
                notes.append(f"{len(in_flight)} requests still waiting at the end were cancelled.")
                await asyncio.gather(*in_flight, return_exceptions=True)
            for c in ctxs:
                await _adrop(driver, c)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(max(0.0, rec._next_flush - perf()))
            rec.flush(perf())
            if progress is not None:
                progress(_progress(shared, wl, [rec], perf()))

    tick = asyncio.ensure_future(ticker())
    if wl.closed_loop:
        tasks = [asyncio.ensure_future(closed_client(i)) for i in range(wl.clients)]
    else:
        tasks = [asyncio.ensure_future(open_loop())]
    grace = op_timeout if op_timeout is not None else 1.0
    timeout = None if shared.deadline == float("inf") else max(0.0, shared.deadline - perf()) + grace
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
            rec.error(TimeoutError("operation still running when the run ended (server paused or "
                                   "overloaded?)"), perf())
        notes.append(f"{len(pending)} clients were still waiting for the server at the end and were cancelled.")
    tick.cancel()
    await asyncio.gather(tick, return_exceptions=True)
    if shared.stop_event.is_set():
        shared.stopped_by = "stopped"
    rec.flush(perf(), final=True)
    rec.stopped_by = shared.stopped_by  # type: ignore[attr-defined]
    rec.t_end = perf()  # type: ignore[attr-defined]
    return [rec]


# -- thread engine (plain functions) ----------------------------------------------------------

def _sync_connect(driver: Any, ctx: Context, shared: _Shared, rec: Recorder) -> bool:
    backoff = _BACKOFF_MIN
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
            rec.error(exc, now, disconnect=True)
            rec.maybe_flush(now)  # keep the time series honest while the server is away
            if now >= shared.deadline or shared.stop_event.is_set():
                return False
            time.sleep(min(backoff, shared.deadline - now))
            backoff = min(_BACKOFF_MAX, backoff * 2)
    return True


def _sync_drop(driver: Any, ctx: Context) -> None:
    conn, ctx.conn = ctx.conn, None
    if driver is not None and conn not in (None, True):
        try:
            driver.close(conn)
        except Exception:
            pass


def _thread_engine(fn: Callable[..., Any], wl: Workload, driver: Any,
                   progress: Callable[[Progress], Any] | None, interval: float,
                   stop: threading.Event | None, op_timeout: float | None,
                   client_offset: int, notes: list[str], t0: float | None = None) -> list[Recorder]:
    arity = _arity(fn)
    t0 = t0 if t0 is not None else time.perf_counter()
    shared = _Shared(wl, t0, stop)
    lock = threading.Lock()  # guards shared.take across threads
    recs: list[Recorder] = []
    perf_ns, perf = time.perf_counter_ns, time.perf_counter

    bugs: list[BaseException] = []

    def take() -> bool:
        with lock:
            return not bugs and shared.take(perf())

    def guarded(target: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args: Any) -> None:
            try:
                target(*args)
            except BaseException as exc:  # surfaced in the calling thread after the run
                bugs.append(exc)
                shared.stop_event.set()
        return wrapper

    def failed(rec: Recorder, ctx: Context, exc: BaseException, backoff: float) -> float:
        _check_bug(exc, fn)
        lost = isinstance(exc, OSError) or (driver is not None and driver.is_disconnect(exc))
        rec.error(exc, perf(), disconnect=lost)
        if lost:
            _sync_drop(driver, ctx)
            time.sleep(max(0.0, min(backoff, shared.deadline - perf())))
            return min(_BACKOFF_MAX, backoff * 2)
        return backoff

    def closed_client(i: int) -> None:
        rec = recs[i]
        ctx = Context(i + client_offset, driver, rec)
        stream = wl.stream(i, client_offset=client_offset)
        backoff = _BACKOFF_MIN
        try:
            while take():
                if ctx.conn is None and not _sync_connect(driver, ctx, shared, rec):
                    return
                op = next(stream)
                start = perf_ns()
                try:
                    fn(ctx, op) if arity == 2 else fn(op)
                except Exception as exc:
                    backoff = failed(rec, ctx, exc, backoff)
                else:
                    rec.ok(op.kind, perf_ns() - start)
                    backoff = _BACKOFF_MIN
                rec.maybe_flush(perf())
        finally:
            _sync_drop(driver, ctx)

    local = threading.local()
    worker_recs: list[Recorder] = []
    all_ctx: list[Context] = []

    def open_serve(op: Op, intended_ns: int) -> None:
        if not hasattr(local, "ctx"):
            with lock:
                rec = Recorder(t0, interval)
                worker_recs.append(rec)
                local.ctx = Context(len(worker_recs) - 1 + client_offset, driver, rec)
                all_ctx.append(local.ctx)
                local.backoff = _BACKOFF_MIN
        ctx = local.ctx
        rec = ctx._rec
        if ctx.conn is None and not _sync_connect(driver, ctx, shared, rec):
            return
        try:
            fn(ctx, op) if arity == 2 else fn(op)
        except Exception as exc:
            local.backoff = failed(rec, ctx, exc, local.backoff)
        else:
            rec.ok(op.kind, perf_ns() - intended_ns)
            local.backoff = _BACKOFF_MIN
        rec.maybe_flush(perf())

    threads: list[threading.Thread] = []
    if wl.closed_loop:
        recs.extend(Recorder(t0, interval) for _ in range(wl.clients))
        threads = [threading.Thread(target=guarded(closed_client), args=(i,), daemon=True, name=f"labkit-client-{i}")
                   for i in range(wl.clients)]
        for t in threads:
            t.start()
    else:
        pool = ThreadPoolExecutor(wl.clients, thread_name_prefix="labkit-open")

        queued: list[Any] = []

        def scheduler() -> None:
            rng = np.random.default_rng(None if wl.seed is None else [wl.seed, 10_000 + client_offset])
            stream = wl.stream(0, client_offset=client_offset)
            t0_ns = int(t0 * 1e9)
            pending = queued
            for offset in wl.arrivals(rng):
                due = t0 + offset
                delay = due - perf()
                if delay > 0:
                    time.sleep(delay)
                if not take():
                    break
                if len(pending) >= min(1024, wl.max_in_flight):
                    pending[:] = [f for f in pending if not f.done()]
                if len(pending) >= wl.max_in_flight:
                    with lock:
                        if not worker_recs:
                            worker_recs.append(Recorder(t0, interval))
                        worker_recs[0].error(OverflowError(
                            f"more than max_in_flight={wl.max_in_flight} requests waiting: the server "
                            "cannot keep up with the rate"), perf())
                    continue
                pending.append(pool.submit(guarded(open_serve), next(stream), t0_ns + int(offset * 1e9)))

        threads = [threading.Thread(target=guarded(scheduler), daemon=True, name="labkit-scheduler")]
        threads[0].start()

    # monitor: progress callbacks from this thread while the clients run
    end_by = shared.deadline + (op_timeout if op_timeout is not None else 1.0)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=min(interval, max(0.01, end_by - perf())))
            if perf() >= end_by:
                break
        if progress is not None:
            progress(_progress(shared, wl, recs + worker_recs, perf()))
        if perf() >= end_by:
            break
    if not wl.closed_loop:
        pool.shutdown(wait=False, cancel_futures=True)
        dropped = sum(1 for f in queued if f.cancelled())
        if dropped:
            notes.append(f"{dropped} requests were still queued at the end and were not served "
                         "(the rate is above what the server and connections sustain).")
        grace_end = perf() + (op_timeout if op_timeout is not None else 1.0)
        for t in list(getattr(pool, "_threads", ())):
            t.join(timeout=max(0.0, grace_end - perf()))
        blocked = sum(t.is_alive() for t in getattr(pool, "_threads", ()))
        if blocked:
            notes.append(f"{blocked} connections were still blocked in an operation at the end and were abandoned.")
    stuck = [t for t in threads if t.is_alive()]
    if stuck and wl.closed_loop:
        for t in stuck:
            recs[int(t.name.rsplit("-", 1)[1])].error(
                TimeoutError("operation still running when the run ended (server paused or overloaded?)"), perf())
        notes.append(f"{len(stuck)} clients were still blocked in an operation at the end and were abandoned.")
    if bugs:
        raise bugs[0]
    if shared.stop_event.is_set():
        shared.stopped_by = "stopped"
    now = perf()
    out = recs + worker_recs
    if not out:
        out = [Recorder(t0, interval)]
    for r in out:
        r.flush(now, final=True)
    out[0].stopped_by = shared.stopped_by  # type: ignore[attr-defined]
    out[0].t_end = now  # type: ignore[attr-defined]
    if not wl.closed_loop:
        for ctx in all_ctx:
            _sync_drop(driver, ctx)
    return out


# -- public entry points ----------------------------------------------------------------------

def _explain(res: RunResult, t_end_rel: float, interval: float) -> None:
    """Turn the error counts into sentences a learner can act on."""
    if not res.errors:
        return
    kinds = ", ".join(f"{k} x{v}" for k, v in sorted(res.errors.items(), key=lambda kv: -kv[1]))
    res.notes.insert(0, f"{res.error_count:,} operations failed ({kinds}); first at "
                        f"t={res.first_error_at:.2f} s, last at t={res.last_error_at:.2f} s.")
    ok_rows = [r for r in res.rows if r.get("ops", 0) > 0]
    last_ok = max((r["t"] + r["seconds"] for r in ok_rows), default=0.0)
    if res.disconnects and res.first_error_at is not None and last_ok <= res.first_error_at + interval and \
            res.last_error_at is not None and res.last_error_at - last_ok >= interval:
        res.notes.append(f"No operation succeeded after t~{last_ok:.1f} s: the server stopped answering "
                         "(killed or down?).")
        res.stopped = "server failure"
    first = next(iter(res.error_examples.values()))
    res.notes.append(f"First error: {first}")


def _finish(name: str, wl: Workload, recs: list[Recorder], t0: float, interval: float,
            notes: list[str]) -> RunResult:
    t_end = getattr(recs[0], "t_end", time.perf_counter())
    res = RunResult.from_recorders(name, wl.describe(), t_end - t0, recs)
    res.stopped = getattr(recs[0], "stopped_by", "duration")
    res.notes.extend(notes)
    _explain(res, t_end - t0, interval)
    return res


def _default_interval(wl: Workload) -> float:
    if wl.duration is None:
        return 1.0
    return 0.25 if wl.duration <= 5 else 0.5 if wl.duration <= 20 else 1.0


def _child(fn: Callable[..., Any], wl: Workload, driver: Any, interval: float, op_timeout: float | None,
           offset: int, start_wall: float, queue: Any, name: str, use_uvloop: bool) -> None:
    try:
        time.sleep(max(0.0, start_wall - time.time()))
        res = _run_here(fn, wl, driver, name, None, interval, None, op_timeout, offset, use_uvloop)
        queue.put(("ok", res.to_wire()))
    except BaseException as exc:  # report to the parent rather than dying silently
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _run_here(fn: Callable[..., Any], wl: Workload, driver: Any, name: str,
              progress: Callable[[Progress], Any] | None, interval: float,
              stop: threading.Event | None, op_timeout: float | None, offset: int,
              use_uvloop: bool) -> RunResult:
    notes: list[str] = []
    t0 = time.perf_counter()
    if _is_async(fn):
        coro_fn = lambda: _async_engine(fn, wl, driver, progress, interval, stop, op_timeout, offset, notes, t0)  # noqa: E731
        recs = _run_coroutine(coro_fn, use_uvloop)
    else:
        recs = _thread_engine(fn, wl, driver, progress, interval, stop, op_timeout, offset, notes, t0)
    return _finish(name, wl, recs, t0, interval, notes)


def _run_coroutine(make: Callable[[], Awaitable[Any]], use_uvloop: bool) -> Any:
    """Run a coroutine to completion even when called from inside a running loop (Jupyter)."""
    def runner() -> Any:
        if use_uvloop:
            try:
                import uvloop
                return uvloop.run(make())  # type: ignore[arg-type]
            except ImportError:
                pass
        return asyncio.run(make())  # type: ignore[arg-type]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return runner()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = runner()
        except BaseException as exc:
            box["error"] = exc
    t = threading.Thread(target=target, name="labkit-load-loop", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run(fn: Callable[..., Any], workload: Workload | None = None, *, driver: Any = None,
        name: str | None = None, progress: Callable[[Progress], Any] | None = None,
        interval: float | None = None, processes: int = 1, stop: threading.Event | None = None,
        op_timeout: float | None = None, watch: Any = (), use_uvloop: bool = False,
        **workload_options: Any) -> RunResult:
    """Run ``fn`` under ``workload`` and return what was measured.

    fn: ``fn(ctx, op)`` or ``fn(op)``, plain or ``async def``. Plain functions run on threads,
    coroutine functions on an event loop (in a helper thread when called from Jupyter).
    driver: gives each client a connection (``ctx.conn``); see labkit.load.drivers.
    workload_options: shortcuts for Workload fields, e.g. ``run(fn, clients=8, duration=3)``.
    processes: split clients over this many worker processes (fork) for more throughput.
    stop: set this threading.Event to end the run early (the UI's stop button).
    op_timeout: seconds before a single operation counts as a TimeoutError (async only).
    watch: server-side stats collectors (labkit.load.server_stats) whose deltas go to result.server.
    """
    if workload is None:
        workload = Workload(**workload_options)
    elif workload_options:
        workload = Workload(**{**{k: v for k, v in workload.__dict__.items() if not k.startswith("_")},
                               **workload_options})
    workload.validate()
    if not callable(fn):
        raise BadParameter(f"fn={fn!r} is not callable: pass a function fn(ctx, op) or fn(op)")
    _arity(fn)
    interval = interval or _default_interval(workload)
    if interval <= 0:
        raise BadParameter(f"interval={interval!r}: must be > 0 seconds")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise BadParameter(f"processes={processes!r}: must be an integer >= 1")
    name = name or getattr(fn, "__name__", "run")
    driver = driver if driver is not None else getattr(fn, "driver", None)
    watchers = list(watch) if isinstance(watch, (list, tuple)) else [watch]
    before = [w.snapshot() for w in watchers]
    if processes == 1:
        res = _run_here(fn, workload, driver, name, progress, interval, stop, op_timeout, 0, use_uvloop)
    else:
        res = _run_processes(fn, workload, driver, name, progress, interval, op_timeout, processes, use_uvloop)
    for w, b in zip(watchers, before):
        try:
            res.server[w.name] = w.delta(b, w.snapshot())
        except Exception as exc:  # the server may be the thing we killed
            res.server[w.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return res


def _run_processes(fn: Callable[..., Any], wl: Workload, driver: Any, name: str,
                   progress: Callable[[Progress], Any] | None, interval: float,
                   op_timeout: float | None, processes: int, use_uvloop: bool) -> RunResult:
    # fork: the lesson's function (often defined in a notebook) is inherited, never pickled
    if "fork" not in mp.get_all_start_methods():
        raise BadParameter("processes > 1 needs the 'fork' start method (Linux/macOS); use processes=1")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    parts = wl.split(processes)
    start_wall = time.time() + 0.2
    procs = []
    offset = 0
    for part in parts:
        p = ctx.Process(target=_child, args=(fn, part, driver, interval, op_timeout, offset, start_wall,
                                             queue, name, use_uvloop), daemon=True)
        p.start()
        procs.append(p)
        offset += part.clients
    results: list[RunResult] = []
    errors: list[str] = []
    t_start = time.perf_counter()
    budget = (wl.duration or 3600) + 30 + (op_timeout or 0)
    while len(results) + len(errors) < len(procs):
        try:
            kind, payload = queue.get(timeout=interval)
        except Exception:  # queue.Empty: report progress by time, check for dead children
            if progress is not None and wl.duration:
                el = time.perf_counter() - t_start
                progress(Progress(el, min(1.0, el / wl.duration), 0, 0, None, []))
            if time.perf_counter() - t_start > budget or not any(p.is_alive() for p in procs) and queue.empty():
                errors.append("a worker process died without reporting")
                break
            continue
        (results.append(RunResult.from_wire(payload)) if kind == "ok" else errors.append(payload))
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    if not results:
        raise RuntimeError(f"all {processes} worker processes failed: {'; '.join(errors)}")
    res = results[0]
    for other in results[1:]:
        res.merge(other)
    res.params = wl.describe()
    res.params["processes"] = processes
    res.notes.extend(f"worker failed: {e}" for e in errors)
    return res


async def arun(fn: Callable[..., Any], workload: Workload | None = None, **kw: Any) -> RunResult:
    """``run`` for code that is itself async: runs in a helper thread so the caller's loop keeps going."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: run(fn, workload, **kw))


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def sweep(experiment: Callable[..., RunResult], param: str, values: Any, *, show_progress: bool = True,
          **fixed: Any) -> Any:
    """Run ``experiment(**{param: v}, **fixed)`` for each value; a DataFrame with one row per run.

    Each row is ``RunResult.row()`` (params, throughput, percentiles in ms, errors, counters) with
    the swept value in column ``param``; the RunResults are in ``df.attrs["results"]``.

        df = sweep(lambda clients: run(op, clients=clients, duration=3), "clients", [1, 2, 4, 8, 16])
        labkit.ui.plots.sweep(df, "clients", "throughput", model=usl_curve, ylabel="throughput (ops/s)")
    """
    import pandas as pd
    values = list(values)
    if not values:
        raise BadParameter(f"sweep over {param!r} needs at least one value")
    results, rows = [], []
    bar = None
    if show_progress:
        from tqdm.auto import tqdm
        bar = tqdm(values, desc=f"sweep {param}", leave=False)
    for v in values:
        res = experiment(**{param: v}, **fixed)
        if not isinstance(res, RunResult):
            raise BadParameter(f"the experiment returned {type(res).__name__}, not a RunResult: return run(...)")
        results.append(res)
        rows.append({**res.row(), param: v})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    df = pd.DataFrame(rows)
    df.attrs["results"] = results
    return df
