"""A Jepsen-style history of operations on a register per key, and a checker for stale reads and lost writes.

Clients record every operation with the time it was invoked and the time it completed, the value written
or read, and its outcome::

    h = History()
    with h.record(client=3, kind="write", key="k1", value=17):
        session.execute(...)                        # raises -> outcome "fail" or "timeout"
    with h.record(client=4, kind="read", key="k1") as op:
        op.value = session.execute(...).one().v     # what the read returned (None: no value)
    report = check(h)
    print(report)                                   # counts, then the operations that prove each violation

Outcomes follow Jepsen: ``ok`` (it happened), ``fail`` (it certainly did not happen, e.g. Cassandra's
Unavailable: the coordinator refused before sending anything), ``timeout`` (indeterminate: it may have
happened, now or later). A timed-out write is never counted against the database: it may take effect at any
time after it was invoked, so it never "precedes" anything.

Why real time and not value order: Cassandra resolves concurrent writes by timestamp, so of two writes that
overlap either may win. The checker therefore only relies on what real time proves: write ``x`` *precedes*
write ``w`` when ``x`` completed before ``w`` was invoked. Values must be unique per key (the recorder's
callers make them so), which lets a read's value name the write it came from.

Rules (each violation lists the operations that prove it):

- **stale read**: a read ``r`` returned the value of write ``x`` (or no value), while some write ``w`` was
  acknowledged before ``r`` began and ``x`` precedes ``w`` (no value precedes every write). ``r`` should have
  seen ``w`` or something at least as new.
- **lost write**: an acknowledged write ``w`` that the last read of its key, begun after ``w`` completed,
  does not see: it returned a value that precedes ``w`` (or no value). Check this with final reads at a
  strong consistency level after the faults are healed, the way Jepsen reads everything at the end.
- **phantom read**: a read returned a value that no write wrote, or one whose write failed.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadParameter

__all__ = ["OUTCOMES", "History", "Operation", "Report", "Violation", "check", "precedes"]

OUTCOMES = ("ok", "fail", "timeout")
KINDS = ("read", "write")


@dataclass
class Operation:
    """One client operation. ``invoke``/``complete`` are seconds on one monotonic clock; ``complete`` is None
    while it runs (and stays None for a timeout: when it took effect, if ever, is unknown)."""

    index: int
    client: int
    kind: str
    key: str
    value: Any = None
    invoke: float = 0.0
    complete: float | None = None
    outcome: str = "timeout"
    error: str = ""
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_complete(self) -> float:
        """When the operation certainly took effect: +inf unless it completed ok."""
        return self.complete if (self.outcome == "ok" and self.complete is not None) else math.inf

    def describe(self, t0: float = 0.0) -> str:
        """One line, Jepsen-like: ``#12 client 3 write k1 = 17  ok  [0.412 s .. 0.419 s]``."""
        end = f"{self.complete - t0:.3f} s" if self.complete is not None else "?"
        val = "(no value)" if self.value is None else repr(self.value)
        err = f" ({self.error})" if self.error else ""
        tags = "".join(f" {k}={v}" for k, v in self.tags.items())
        return (
            f"#{self.index} client {self.client} {self.kind} {self.key} {'=' if self.kind == 'write' else '->'} "
            f"{val}  {self.outcome}{err}  [{self.invoke - t0:.3f} s .. {end}]{tags}"
        )


def precedes(x: Operation | None, w: Operation) -> bool:
    """True when write ``x`` certainly completed before write ``w`` was invoked (None: the initial empty
    state, which precedes every write)."""
    if x is None:
        return True
    return x.effective_complete < w.invoke


def default_classify(exc: BaseException) -> str:
    """Cassandra's exceptions to outcomes: refusals before any replica was touched are ``fail``; anything else
    (timeouts, lost connections, unknown errors) may have been applied, so it is ``timeout``."""
    name = type(exc).__name__
    if name in ("Unavailable", "InvalidRequest", "Unauthorized", "SyntaxException", "ConfigurationException"):
        return "fail"
    return "timeout"


class History:
    """A thread-safe, append-only list of operations, shared by all clients of an experiment."""

    def __init__(
        self,
        classify: Callable[[BaseException], str] = default_classify,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.ops: list[Operation] = []
        self.classify = classify
        self.clock = clock
        self.t0 = clock()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Operation]:
        return iter(list(self.ops))

    def invoke(self, client: int, kind: str, key: str, value: Any = None, **tags: Any) -> Operation:
        """Open an operation now; finish it with :meth:`ok`, :meth:`fail` or :meth:`timeout`."""
        if kind not in KINDS:
            raise BadParameter(f"kind={kind!r}: a history records 'read' or 'write' operations")
        if kind == "read" and value is not None:
            raise BadParameter("a read's value is what it returned: set it when it completes, not at invoke")
        with self._lock:
            op = Operation(len(self.ops), client, kind, str(key), value, self.clock(), tags=tags)
            self.ops.append(op)
        return op

    def ok(self, op: Operation, value: Any = None) -> Operation:
        op.complete = self.clock()
        op.outcome = "ok"
        if op.kind == "read":
            op.value = value
        return op

    def fail(self, op: Operation, error: BaseException | str) -> Operation:
        op.complete = self.clock()
        op.outcome = "fail"
        op.error = error if isinstance(error, str) else type(error).__name__
        return op

    def timeout(self, op: Operation, error: BaseException | str = "timeout") -> Operation:
        op.complete = None  # indeterminate: it may still take effect
        op.outcome = "timeout"
        op.error = error if isinstance(error, str) else type(error).__name__
        return op

    @contextmanager
    def record(self, client: int, kind: str, key: str, value: Any = None, **tags: Any) -> Iterator[Operation]:
        """Record the operation run inside the block. A read sets ``op.value`` to what it returned. An
        exception is classified (``classify``) as fail or timeout and re-raised; a cancelled operation (the run
        ended while it waited) is a timeout."""
        op = self.invoke(client, kind, key, value, **tags)
        result: Any = op.value
        try:
            yield op
            result = op.value
        except BaseException as exc:
            outcome = self.classify(exc) if isinstance(exc, Exception) else "timeout"
            (self.fail if outcome == "fail" else self.timeout)(op, exc)
            raise
        self.ok(op, result)

    def extend(self, ops: Iterable[Operation]) -> None:
        """Add finished operations (hand-made histories in tests, or another recorder's)."""
        with self._lock:
            for op in ops:
                op.index = len(self.ops)
                self.ops.append(op)

    def filter(self, pred: Callable[[Operation], bool]) -> History:
        """A new history with the operations for which ``pred`` is true (same clock origin, same indices)."""
        h = History(self.classify, self.clock)
        h.t0 = self.t0
        h.ops = [op for op in self.ops if pred(op)]
        return h

    def counts(self) -> dict[str, int]:
        out = {f"{k} {o}": 0 for k in KINDS for o in OUTCOMES}
        for op in self.ops:
            out[f"{op.kind} {op.outcome}"] += 1
        return out

    def errors(self) -> dict[str, int]:
        """How often each error name occurred (e.g. {'Unavailable': 120, 'WriteTimeout': 3})."""
        out: dict[str, int] = {}
        for op in self.ops:
            if op.error:
                out[op.error] = out.get(op.error, 0) + 1
        return out

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "index": o.index,
                    "client": o.client,
                    "kind": o.kind,
                    "key": o.key,
                    "value": o.value,
                    "invoke_s": o.invoke - self.t0,
                    "complete_s": None if o.complete is None else o.complete - self.t0,
                    "outcome": o.outcome,
                    "error": o.error,
                    **o.tags,
                }
                for o in self.ops
            ]
        )


@dataclass
class Violation:
    """A broken rule and the operations that prove it (the offending one first)."""

    rule: str
    op: Operation
    witnesses: list[Operation]
    why: str

    def describe(self, t0: float = 0.0) -> str:
        lines = [f"{self.rule}: {self.why}", "    " + self.op.describe(t0)]
        lines += ["    " + w.describe(t0) for w in self.witnesses]
        return "\n".join(lines)


@dataclass
class Report:
    """What :func:`check` found. ``str(report)`` shows the counts, then up to ``show`` violations per rule."""

    reads_ok: int
    writes_ok: int
    indeterminate: int
    failed: int
    stale_reads: list[Violation]
    lost_writes: list[Violation]
    phantom_reads: list[Violation]
    t0: float = 0.0
    show: int = 3

    @property
    def valid(self) -> bool:
        return not (self.stale_reads or self.lost_writes or self.phantom_reads)

    @property
    def stale_per_1000_reads(self) -> float:
        return 1000.0 * len(self.stale_reads) / self.reads_ok if self.reads_ok else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "reads ok": self.reads_ok,
            "writes ok": self.writes_ok,
            "indeterminate": self.indeterminate,
            "failed": self.failed,
            "stale reads": len(self.stale_reads),
            "stale / 1000 reads": round(self.stale_per_1000_reads, 1),
            "lost writes": len(self.lost_writes),
            "phantom reads": len(self.phantom_reads),
        }

    def __str__(self) -> str:
        head = (
            f"{self.reads_ok} reads ok, {self.writes_ok} writes ok, {self.indeterminate} indeterminate "
            f"(timeouts), {self.failed} failed: {len(self.stale_reads)} stale reads, {len(self.lost_writes)} "
            f"lost writes, {len(self.phantom_reads)} phantom reads"
        )
        parts = [head + (" - valid" if self.valid else "")]
        for vs in (self.stale_reads, self.lost_writes, self.phantom_reads):
            for v in vs[: self.show]:
                parts.append(v.describe(self.t0))
            if len(vs) > self.show:
                parts.append(f"    ... and {len(vs) - self.show} more {vs[0].rule}s")
        return "\n".join(parts)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))


def _by_key(ops: Iterable[Operation]) -> dict[str, list[Operation]]:
    out: dict[str, list[Operation]] = {}
    for op in ops:
        out.setdefault(op.key, []).append(op)
    return out


def _source(r: Operation, by_value: dict[Any, Operation], phantom: list[Violation]) -> tuple[bool, Operation | None]:
    """(known, the write a read's value came from; None for no value). Unknown values are phantom reads."""
    if r.value is None:
        return True, None
    x = by_value.get(r.value)
    if x is None:
        phantom.append(Violation("phantom read", r, [], f"no write of {r.value!r} to {r.key!r} in the history"))
        return False, None
    if x.outcome == "fail":
        phantom.append(Violation("phantom read", r, [x], "it returned the value of a write that failed"))
        return False, None
    return True, x


def check(history: History | Iterable[Operation], *, show: int = 3) -> Report:
    """Check a register-per-key history for stale reads, lost writes and phantom reads (rules in the module
    docstring). Runs in O(n log n); a history of 100,000 operations takes about a second."""
    ops = list(history.ops if isinstance(history, History) else history)
    t0 = history.t0 if isinstance(history, History) else min((o.invoke for o in ops), default=0.0)
    stale: list[Violation] = []
    lost: list[Violation] = []
    phantom: list[Violation] = []
    for key, kops in _by_key(ops).items():
        writes = [o for o in kops if o.kind == "write"]
        by_value: dict[Any, Operation] = {}
        for w in writes:
            if w.value is None:
                raise BadParameter(f"write {w.describe(t0)} has no value: every write must write a value")
            if w.value in by_value:
                raise BadParameter(
                    f"two writes of {w.value!r} to key {key!r} (#{by_value[w.value].index} and "
                    f"#{w.index}): values must be unique per key so a read names its write"
                )
            by_value[w.value] = w
        # acknowledged writes: their effective_complete is their (finite) complete time
        acked = sorted(
            (w for w in writes if w.outcome == "ok" and w.complete is not None), key=lambda w: w.effective_complete
        )
        completes = [w.effective_complete for w in acked]
        latest_invoked: list[Operation] = []  # prefix: among acked[:i+1], the write invoked last
        for w in acked:
            latest_invoked.append(
                w if not latest_invoked or w.invoke > latest_invoked[-1].invoke else latest_invoked[-1]
            )
        reads = [o for o in kops if o.kind == "read" and o.outcome == "ok"]

        sources = {}
        for r in reads:
            known, x = _source(r, by_value, phantom)
            sources[r.index] = (known, x)
            if not known:
                continue
            i = bisect.bisect_left(completes, r.invoke)  # acked[:i] completed before r began
            if i == 0:
                continue
            w = latest_invoked[i - 1]
            if precedes(x, w):
                got = "no value" if x is None else f"{x.value!r}"
                stale.append(
                    Violation(
                        "stale read",
                        r,
                        [w] + ([x] if x is not None else []),
                        f"read of {key!r} returned {got} although write of {w.value!r} was acknowledged "
                        f"{(r.invoke - w.effective_complete) * 1000:.0f} ms before the read began"
                        + ("" if x is None else f" and the write of {x.value!r} had completed before it started"),
                    )
                )
        if reads and acked:
            last = max(reads, key=lambda r: r.invoke)
            known, x = sources[last.index]
            if known:
                for w in acked[: bisect.bisect_left(completes, last.invoke)]:
                    if precedes(x, w):
                        got = "no value" if x is None else f"{x.value!r}"
                        lost.append(
                            Violation(
                                "lost write",
                                w,
                                [last] + ([x] if x is not None else []),
                                f"acknowledged write of {w.value!r} to {key!r} is gone: the last read, begun "
                                f"{(last.invoke - w.effective_complete) * 1000:.0f} ms after it completed, "
                                f"returned {got}",
                            )
                        )
    indeterminate = sum(1 for o in ops if o.outcome == "timeout")
    return Report(
        reads_ok=sum(1 for o in ops if o.kind == "read" and o.outcome == "ok"),
        writes_ok=sum(1 for o in ops if o.kind == "write" and o.outcome == "ok"),
        indeterminate=indeterminate,
        failed=sum(1 for o in ops if o.outcome == "fail"),
        stale_reads=stale,
        lost_writes=lost,
        phantom_reads=phantom,
        t0=t0,
        show=show,
    )
