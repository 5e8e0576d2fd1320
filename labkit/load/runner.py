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

Layout: this module is the public entry (run, arun, sweep, worker processes); ``_core`` decides
what happens around every operation, once; ``_engines`` drives that core with asyncio (``async
def`` operations) or threads (plain functions).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from labkit.errors import BadParameter
from labkit.load._core import Context, OperationBug, Progress, arity, is_async
from labkit.load._engines import async_engine, thread_engine
from labkit.load.metrics import Recorder, RunResult
from labkit.load.workload import Workload

__all__ = ["run", "arun", "sweep", "Context", "Progress", "OperationBug"]

# -- public entry points ----------------------------------------------------------------------


def _explain(res: RunResult, t_end_rel: float, interval: float) -> None:
    """Turn the error counts into sentences a learner can act on."""
    if not res.errors:
        return
    kinds = ", ".join(f"{k} x{v}" for k, v in sorted(res.errors.items(), key=lambda kv: -kv[1]))
    res.notes.insert(
        0,
        f"{res.error_count:,} operations failed ({kinds}); first at "
        f"t={res.first_error_at:.2f} s, last at t={res.last_error_at:.2f} s.",
    )
    ok_rows = [r for r in res.rows if r.get("ops", 0) > 0]
    last_ok = max((r["t"] + r["seconds"] for r in ok_rows), default=0.0)
    if (
        res.disconnects
        and res.first_error_at is not None
        and last_ok <= res.first_error_at + interval
        and res.last_error_at is not None
        and res.last_error_at - last_ok >= interval
    ):
        res.notes.append(
            f"No operation succeeded after t~{last_ok:.1f} s: the server stopped answering (killed or down?)."
        )
        res.stopped = "server failure"
    first = next(iter(res.error_examples.values()))
    res.notes.append(f"First error: {first}")


def _finish(
    name: str,
    wl: Workload,
    recs: list[Recorder],
    t0: float,
    t_end: float,
    stopped: str,
    interval: float,
    notes: list[str],
) -> RunResult:
    for r in recs:
        r.flush(t_end, final=True)
    res = RunResult.from_recorders(name, wl.describe(), t_end - t0, recs)
    res.stopped = stopped
    res.notes.extend(notes)
    _explain(res, t_end - t0, interval)
    return res


def _default_interval(wl: Workload) -> float:
    if wl.duration is None:
        return 1.0
    return 0.25 if wl.duration <= 5 else 0.5 if wl.duration <= 20 else 1.0


def _child(
    fn: Callable[..., Any],
    wl: Workload,
    driver: Any,
    interval: float,
    op_timeout: float | None,
    offset: int,
    start_wall: float,
    queue: Any,
    name: str,
    use_uvloop: bool,
) -> None:
    try:
        time.sleep(max(0.0, start_wall - time.time()))
        res = _run_here(fn, wl, driver, name, None, interval, None, op_timeout, offset, use_uvloop)
        queue.put(("ok", res.to_wire()))
    except BaseException as exc:  # report to the parent rather than dying silently
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _run_here(
    fn: Callable[..., Any],
    wl: Workload,
    driver: Any,
    name: str,
    progress: Callable[[Progress], Any] | None,
    interval: float,
    stop: threading.Event | None,
    op_timeout: float | None,
    offset: int,
    use_uvloop: bool,
) -> RunResult:
    notes: list[str] = []
    t0 = time.perf_counter()
    if is_async(fn):
        recs, state = run_coroutine(
            lambda: async_engine(fn, wl, driver, progress, interval, stop, op_timeout, offset, notes, t0), use_uvloop
        )
    else:
        recs, state = thread_engine(fn, wl, driver, progress, interval, stop, op_timeout, offset, notes, t0)
    return _finish(name, wl, recs, t0, time.perf_counter(), state.finish(), interval, notes)


def run_coroutine(make: Callable[[], Awaitable[Any]], use_uvloop: bool = False) -> Any:
    """Run the coroutine ``make()`` to completion and return its value (or raise its exception).

    Why not ``asyncio.run``: a notebook cell already runs inside Jupyter's event loop, where ``asyncio.run``
    refuses to start; then the coroutine gets a fresh loop on a thread of its own. ``make`` is a factory, so the
    coroutine is created inside the loop that runs it. The load engine drives its asyncio clients through it;
    lessons use it to call a learner's ``async def`` once, outside any load run."""

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


def run(
    fn: Callable[..., Any],
    workload: Workload | None = None,
    *,
    driver: Any = None,
    name: str | None = None,
    progress: Callable[[Progress], Any] | None = None,
    interval: float | None = None,
    processes: int = 1,
    stop: threading.Event | None = None,
    op_timeout: float | None = None,
    watch: Any = (),
    use_uvloop: bool = False,
    **workload_options: Any,
) -> RunResult:
    """Run ``fn`` under ``workload`` and return what was measured.

    fn: ``fn(ctx, op)`` or ``fn(op)``, plain or ``async def``. Plain functions run on threads,
    coroutine functions on an event loop (in a helper thread when called from Jupyter).
    driver: gives each client a connection (``ctx.conn``); see labkit.load.drivers.
    workload_options: shortcuts for Workload fields, e.g. ``run(fn, clients=8, duration=3)``.
    processes: split clients over this many worker processes (fork) for more throughput.
    stop: set this threading.Event to end the run early (the UI's stop button).
    op_timeout: seconds after which a single operation counts as a TimeoutError (both engines: async
        cancels it at that point; a blocking call is judged when it returns).
    watch: server-side stats collectors (labkit.load.server_stats) whose deltas go to result.server.
    """
    if workload is None:
        workload = Workload(**workload_options)
    elif workload_options:
        workload = Workload(
            **{**{k: v for k, v in workload.__dict__.items() if not k.startswith("_")}, **workload_options}
        )
    workload.validate()
    if not callable(fn):
        raise BadParameter(f"fn={fn!r} is not callable: pass a function fn(ctx, op) or fn(op)")
    arity(fn)
    interval = interval or _default_interval(workload)
    if interval <= 0:
        raise BadParameter(f"interval={interval!r}: must be > 0 seconds")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise BadParameter(f"processes={processes!r}: must be an integer >= 1")
    label = name or str(getattr(fn, "__name__", "run"))
    driver = driver if driver is not None else getattr(fn, "driver", None)
    watchers = list(watch) if isinstance(watch, (list, tuple)) else [watch]
    before = [w.snapshot() for w in watchers]
    if processes == 1:
        res = _run_here(fn, workload, driver, label, progress, interval, stop, op_timeout, 0, use_uvloop)
    else:
        res = _run_processes(fn, workload, driver, label, progress, interval, op_timeout, processes, use_uvloop)
    for w, b in zip(watchers, before):
        try:
            res.server[w.name] = w.delta(b, w.snapshot())
        except Exception as exc:  # the server may be the thing we killed
            res.server[w.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return res


def _run_processes(
    fn: Callable[..., Any],
    wl: Workload,
    driver: Any,
    name: str,
    progress: Callable[[Progress], Any] | None,
    interval: float,
    op_timeout: float | None,
    processes: int,
    use_uvloop: bool,
) -> RunResult:
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
        p = ctx.Process(
            target=_child,
            args=(fn, part, driver, interval, op_timeout, offset, start_wall, queue, name, use_uvloop),
            daemon=True,
        )
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


def sweep(
    experiment: Callable[..., RunResult], param: str, values: Any, *, show_progress: bool = True, **fixed: Any
) -> Any:
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
