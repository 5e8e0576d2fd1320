"""The load runner's one core: every decision about an operation, shared by both engines.

Two engines run a lesson's operation, because a lesson writes either ``async def`` operations
(an event loop) or plain functions (threads). They differ only in how they wait: ``await`` or a
blocking call. Everything else lives here, once, in :class:`ClientCore`, a sans-IO object each
engine consults around every operation:

* may another operation start? (duration, op count, the Stop button)            -> ``next_op``
* an operation succeeded: record its latency, or count it as a timeout when it ran
  past ``op_timeout``                                                           -> ``succeeded``
* an operation failed: a bug in the lesson's code (raise at once), a lost
  connection (drop it, back off) or a server answer (count it, go on)           -> ``failed``
* a connect failed: back off or give up when the run is over                    -> ``connect_failed``

So both engines honour the same options with the same meaning; tests/test_runner_engines.py runs
every option on both.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from labkit.errors import BadParameter
from labkit.load.metrics import Recorder
from labkit.load.workload import Op, Workload

__all__ = [
    "BACKOFF_MIN",
    "ClientCore",
    "Context",
    "OperationBug",
    "Progress",
    "RunState",
    "arity",
    "is_async",
    "progress_of",
]

BACKOFF_MIN, BACKOFF_MAX = 0.02, 0.5
# Bugs in the operation, not server behaviour: raise at once instead of counting 100k of them.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, ImportError, SyntaxError)


class OperationBug(Exception):
    """Wraps a programming error raised by the lesson's operation (see __cause__)."""


@dataclass
class Progress:
    """Handed to the progress callback about once per interval."""

    elapsed: float
    fraction: float  # 0..1 of duration or op count
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


def arity(fn: Callable[..., Any]) -> int:
    """1 for ``fn(op)``, 2 for ``fn(ctx, op)``; anything else is a clear error."""
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return 2
    if len(params) not in (1, 2):
        raise BadParameter(
            f"the operation {getattr(fn, '__name__', fn)!r} takes {len(params)} required "
            "arguments: define it as fn(op) or fn(ctx, op)"
        )
    return len(params)


def is_async(fn: Callable[..., Any]) -> bool:
    # an object whose __call__ is a coroutine function is async too (callable() cannot tell)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


class RunState:
    """What the clients of one run share: the stop conditions and the count of operations issued.

    ``take`` is called under the engine's lock (threads) or on the one event loop (asyncio)."""

    def __init__(self, wl: Workload, t0: float, stop: threading.Event | None) -> None:
        self.deadline = t0 + wl.duration if wl.duration is not None else float("inf")
        self.duration = wl.duration
        self.limit = wl.ops
        self.issued = 0
        self.t0 = t0
        self.stop_event = stop or threading.Event()
        self.stopped_by = "duration" if wl.duration is not None else "ops"

    def take(self, now: float) -> bool:
        """May one more op start?"""
        if now >= self.deadline or self.stop_event.is_set():
            return False
        if self.limit is not None and self.issued >= self.limit:
            self.stopped_by = "ops"
            return False
        self.issued += 1
        return True

    def over(self, now: float) -> bool:
        return now >= self.deadline or self.stop_event.is_set()

    def left(self, now: float) -> float:
        return max(0.0, self.deadline - now)

    def fraction(self, now: float) -> float:
        parts = []
        if self.duration:
            parts.append((now - self.t0) / self.duration)
        if self.limit:
            parts.append(self.issued / self.limit)
        return max(0.0, min(1.0, max(parts) if parts else 0.0))

    def finish(self) -> str:
        if self.stop_event.is_set():
            self.stopped_by = "stopped"
        return self.stopped_by


def progress_of(state: RunState, recs: list[Recorder], now: float) -> Progress:
    rows = [row for r in recs for row in r.rows]
    ops = sum(int(r.get("ops", 0)) for r in rows)
    errors = sum(sum(r.errors.values()) for r in recs)
    last = recs[0].live_row() if len(recs) == 1 else (rows[-1] if rows else None)
    return Progress(now - state.t0, state.fraction(now), ops, errors, last, rows)


class ClientCore:
    """The decisions around one client's operations; the engine does the waiting.

    ``succeeded``/``failed``/``connect_failed`` return how long the engine must back off before
    trying again (``None``: no wait). ``failed`` also says whether the connection is lost (the
    engine drops it); ``connect_failed`` returns ``None`` when the run is over (give up).
    """

    __slots__ = ("state", "rec", "ctx", "driver", "fn", "timeout_ns", "op_timeout", "backoff", "stream", "call")

    def __init__(
        self,
        state: RunState,
        rec: Recorder,
        ctx: Context,
        driver: Any,
        fn: Callable[..., Any],
        op_timeout: float | None,
        stream: Iterator[Op] | None = None,
    ) -> None:
        self.state, self.rec, self.ctx, self.driver, self.fn = state, rec, ctx, driver, fn
        self.op_timeout = op_timeout
        self.timeout_ns = int(op_timeout * 1e9) if op_timeout is not None else None
        self.backoff = BACKOFF_MIN
        self.stream = stream
        self.call: Callable[[Op], Any] = (lambda op: fn(ctx, op)) if arity(fn) == 2 else fn

    def next_op(self, take: Callable[[], bool]) -> Op | None:
        """The next operation of a closed-loop client, or None when the run is over."""
        if not take():
            return None
        return next(self.stream)  # type: ignore[arg-type]

    def succeeded(self, op: Op, start_ns: int, end_ns: int) -> None:
        """Record a completed operation (latency from ``start_ns``: the intended arrival in open loop).

        An operation that returned after ``op_timeout`` counts as a TimeoutError in both engines (the
        asyncio engine cancels it at the deadline; a blocking call can only be judged when it returns)."""
        took = end_ns - start_ns
        if self.timeout_ns is not None and took > self.timeout_ns:
            self.rec.error(
                TimeoutError(f"operation took {took / 1e9:.3f} s > op_timeout={self.op_timeout} s"), end_ns / 1e9
            )
        else:
            self.rec.ok(op.kind, took)
        self.backoff = BACKOFF_MIN

    def failed(self, exc: BaseException, now: float) -> tuple[bool, float]:
        """(connection lost, seconds to back off) for an exception from the operation."""
        if isinstance(exc, _PROGRAMMING_ERRORS):
            raise OperationBug(
                f"the operation {getattr(self.fn, '__name__', self.fn)!r} raised "
                f"{type(exc).__name__}: {exc} -- a bug in the operation's code, not a server "
                "failure; fix it and run again"
            ) from exc
        lost = isinstance(exc, OSError) or (self.driver is not None and self.driver.is_disconnect(exc))
        self.rec.error(exc, now, disconnect=lost)
        if not lost:
            return False, 0.0
        wait = min(self.backoff, self.state.left(now))
        self.backoff = min(BACKOFF_MAX, self.backoff * 2)
        return True, wait

    def connect_failed(self, exc: BaseException, now: float) -> float | None:
        """Seconds to back off before connecting again, or None when the run is over."""
        self.rec.error(exc, now, disconnect=True)
        if self.state.over(now):
            return None
        wait = min(self.backoff, self.state.left(now))
        self.backoff = min(BACKOFF_MAX, self.backoff * 2)
        return wait
