"""Latency histograms (HDR), throughput over time, errors by kind and lesson counters.

The runner records raw latencies (integers, nanoseconds) into a :class:`Recorder`; every interval
it folds them into an HDR histogram (microsecond units) and one time-series row. Workers in other
processes ship their histograms encoded, and :meth:`RunResult.merge` adds them up.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

__all__ = ["new_histogram", "record_many", "Recorder", "RunResult", "PERCENTILES"]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_LOWEST_US, _HIGHEST_US, _DIGITS = 1, 3_600_000_000, 3  # 1 µs .. 1 h, 3 significant digits


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds (1 µs to 1 h, 3 significant digits)."""
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)


def record_many(hist: HdrHistogram, latencies_us: np.ndarray) -> None:
    """Record many latencies at once.

    Why: hdrh's record_value costs ~1 µs of Python per call. Rounding each value down to the
    histogram's own resolution (11 significant bits here) first loses nothing the histogram would
    keep, and collapses thousands of values into a few hundred (value, count) calls.
    """
    if len(latencies_us) == 0:
        return
    v = np.clip(np.asarray(latencies_us, dtype=np.int64), _LOWEST_US, _HIGHEST_US)
    shift = np.maximum(0, np.floor(np.log2(v)).astype(np.int64) - 10)
    q = (v >> shift) << shift
    vals, counts = np.unique(q, return_counts=True)
    for val, cnt in zip(vals.tolist(), counts.tolist()):
        hist.record_value(val, cnt)


def hist_percentiles(hist: HdrHistogram, pcts: Iterable[float] = PERCENTILES) -> dict[str, float]:
    """{'p50': ms, ..., 'max': ms, 'mean': ms} from a microsecond histogram (NaN when empty)."""
    out: dict[str, float] = {}
    empty = hist.get_total_count() == 0
    for p in pcts:
        label = "p" + (f"{p:g}".replace(".", ""))
        out[label] = float("nan") if empty else hist.get_value_at_percentile(p) / 1000.0
    out["max"] = float("nan") if empty else hist.get_max_value() / 1000.0
    out["mean"] = float("nan") if empty else hist.get_mean_value() / 1000.0
    return out


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class Recorder:
    """Per-worker accumulator. Not thread-safe by design: each thread/event loop owns one, and
    they are merged at the end (cheaper than a lock per operation)."""

    def __init__(self, t0: float, interval: float) -> None:
        self.t0 = t0
        self.interval = interval
        self._lat: dict[str, list[int]] = collections.defaultdict(list)
        self._errs_now = 0
        self._next_flush = t0 + interval
        self.hists: dict[str, HdrHistogram] = {}
        self.rows: list[dict[str, Any]] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.error_examples: dict[str, str] = {}
        self.first_error_at: float | None = None
        self.last_error_at: float | None = None
        self.disconnects = 0
        self.counters: collections.Counter[str] = collections.Counter()
        self._counters_now: collections.Counter[str] = collections.Counter()

    def ok(self, kind: str, latency_ns: int) -> None:
        self._lat[kind].append(latency_ns)

    def error(self, exc: BaseException, now: float, disconnect: bool = False) -> None:
        kind = type(exc).__name__
        self.disconnects += disconnect
        self.errors[kind] += 1
        self.error_examples.setdefault(kind, _short(exc))
        self._errs_now += 1
        if self.first_error_at is None:
            self.first_error_at = now - self.t0
        self.last_error_at = now - self.t0

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n
        self._counters_now[name] += n

    def maybe_flush(self, now: float) -> None:
        if now >= self._next_flush:
            self.flush(now)

    def flush(self, now: float, final: bool = False) -> None:
        """Close the current interval: one row, latencies folded into the histograms."""
        start = self._next_flush - self.interval
        end = now if final else self._next_flush
        row: dict[str, Any] = {"t": round(start - self.t0, 6), "seconds": max(end - start, 1e-9)}
        all_us = []
        for kind, lat in self._lat.items():
            if not lat:
                continue
            us = np.asarray(lat, dtype=np.int64) // 1000
            all_us.append(us)
            record_many(self.hists.setdefault(kind, new_histogram()), us)
            row[f"ops_{kind}"] = len(us)
        merged = np.concatenate(all_us) if all_us else np.empty(0, np.int64)
        row["ops"] = int(len(merged))
        row["errors"] = self._errs_now
        row["p50_ms"] = float(np.percentile(merged, 50) / 1000) if len(merged) else float("nan")
        row["p99_ms"] = float(np.percentile(merged, 99) / 1000) if len(merged) else float("nan")
        for name, n in self._counters_now.items():
            row[name] = n
        if row["ops"] or row["errors"] or not final:
            self.rows.append(row)
        self._lat = collections.defaultdict(list)
        self._errs_now = 0
        self._counters_now = collections.Counter()
        # a long stall (paused server) may skip intervals: emit empty rows so the plot shows a gap
        self._next_flush += self.interval
        while not final and now >= self._next_flush:
            self.rows.append(
                {
                    "t": round(self._next_flush - self.interval - self.t0, 6),
                    "seconds": self.interval,
                    "ops": 0,
                    "errors": 0,
                    "p50_ms": float("nan"),
                    "p99_ms": float("nan"),
                }
            )
            self._next_flush += self.interval

    def live_row(self) -> dict[str, Any] | None:
        return self.rows[-1] if self.rows else None


@dataclass
class RunResult:
    """What a run measured. ``summary()`` for a line, ``to_frame()`` for the time series,
    ``percentiles()`` for latencies in ms, ``counters`` for the lesson's own counts,
    ``errors`` by exception type, ``notes`` for what happened (failures, early stop)."""

    name: str
    params: dict[str, Any]
    duration: float
    hists: dict[str, HdrHistogram] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    server: dict[str, Any] = field(default_factory=dict)
    first_error_at: float | None = None
    last_error_at: float | None = None
    disconnects: int = 0
    stopped: str = "completed"

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def from_recorders(
        cls, name: str, params: dict[str, Any], duration: float, recorders: Iterable[Recorder]
    ) -> RunResult:
        res = cls(name=name, params=params, duration=duration)
        rows_by_t: dict[float, dict[str, Any]] = {}
        for rec in recorders:
            for kind, h in rec.hists.items():
                res.hists.setdefault(kind, new_histogram()).add(h)
            for row in rec.rows:
                _add_row(rows_by_t, row)
            for k, v in rec.errors.items():
                res.errors[k] = res.errors.get(k, 0) + v
            for k, example in rec.error_examples.items():
                res.error_examples.setdefault(k, example)
            for k, v in rec.counters.items():
                res.counters[k] = res.counters.get(k, 0) + v
            res.disconnects += rec.disconnects
            res.first_error_at = _min(res.first_error_at, rec.first_error_at)
            res.last_error_at = _max(res.last_error_at, rec.last_error_at)
        res.rows = [rows_by_t[t] for t in sorted(rows_by_t)]
        return res

    def merge(self, other: RunResult) -> RunResult:
        """Add another worker's result (same run, another process) into this one."""
        for kind, h in other.hists.items():
            self.hists.setdefault(kind, new_histogram()).add(h)
        rows_by_t: dict[float, dict[str, Any]] = {}
        for row in self.rows + other.rows:
            _add_row(rows_by_t, row)
        self.rows = [rows_by_t[t] for t in sorted(rows_by_t)]
        for src, dst in ((other.errors, self.errors), (other.counters, self.counters)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        for k, example in other.error_examples.items():
            self.error_examples.setdefault(k, example)
        self.disconnects += other.disconnects
        self.first_error_at = _min(self.first_error_at, other.first_error_at)
        self.last_error_at = _max(self.last_error_at, other.last_error_at)
        self.duration = max(self.duration, other.duration)
        self.notes += [n for n in other.notes if n not in self.notes]
        if other.stopped != "completed":
            self.stopped = other.stopped
        return self

    def to_wire(self) -> dict[str, Any]:
        """A picklable form (histograms encoded) to send from a worker process."""
        d = dict(self.__dict__)
        d["hists"] = {k: h.encode() for k, h in self.hists.items()}
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RunResult:
        d = dict(d)
        d["hists"] = {k: HdrHistogram.decode(v) for k, v in d["hists"].items()}
        return cls(**d)

    # -- reading -----------------------------------------------------------------------------
    @property
    def histogram(self) -> HdrHistogram:
        """All operation kinds together."""
        h = new_histogram()
        for x in self.hists.values():
            h.add(x)
        return h

    @property
    def ops(self) -> int:
        """Successful operations."""
        return sum(h.get_total_count() for h in self.hists.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Successful operations per second over the whole run."""
        return self.ops / self.duration if self.duration > 0 else 0.0

    def percentiles(self, kind: str | None = None) -> dict[str, float]:
        """Latency percentiles in milliseconds: p50, p90, p99, p999, max, mean."""
        if kind is None:
            return hist_percentiles(self.histogram)
        if kind not in self.hists:
            from labkit.errors import BadParameter

            raise BadParameter(f"no operations of kind {kind!r} in this run: kinds are {sorted(self.hists)}")
        return hist_percentiles(self.hists[kind])

    def latency_frame(self) -> Any:
        """One row per op kind (and 'all'): count and percentiles in ms."""
        import pandas as pd

        rows = [{"kind": k, "ops": h.get_total_count(), **hist_percentiles(h)} for k, h in sorted(self.hists.items())]
        rows.append({"kind": "all", "ops": self.ops, **self.percentiles()})
        return pd.DataFrame(rows).set_index("kind")

    def to_frame(self) -> Any:
        """Time series: one row per interval (t, ops, ops_per_s, errors, p50_ms, p99_ms, counters...)."""
        import pandas as pd

        df = pd.DataFrame(self.rows)
        if df.empty:
            return pd.DataFrame(columns=["t", "ops", "ops_per_s", "errors", "p50_ms", "p99_ms"])
        df["ops_per_s"] = df["ops"] / df["seconds"]
        front = ["t", "ops", "ops_per_s", "errors", "p50_ms", "p99_ms"]
        return df[front + [c for c in df.columns if c not in front]].fillna({"errors": 0})

    def row(self) -> dict[str, Any]:
        """One flat dict for sweeps: params, throughput, percentiles, errors, counters."""
        d = {
            **{k: v for k, v in self.params.items() if not isinstance(v, dict)},
            "ops": self.ops,
            "throughput": self.throughput,
            "errors": self.error_count,
        }
        d.update({f"{k}_ms": v for k, v in self.percentiles().items()})
        d.update(self.counters)
        return d

    def summary(self) -> str:
        """One line: throughput, latency percentiles, errors, and what happened."""
        p = self.percentiles()
        loop = self.params.get("loop", "")
        who = f"{self.params.get('clients', '?')} clients {loop} loop".strip()
        if self.params.get("rate"):
            who += f" at {self.params['rate']:,.0f}/s target"
        line = (
            f"{self.name}: {self.throughput:,.0f} ops/s over {self.duration:.1f} s "
            f"({self.ops:,} ops, {who}); p50 {p['p50']:.3g} ms, p99 {p['p99']:.3g} ms, "
            f"p99.9 {p['p999']:.3g} ms, max {p['max']:.3g} ms; errors {self.error_count:,}"
        )
        if self.errors:
            line += " (" + ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items(), key=lambda kv: -kv[1])) + ")"
        if self.counters:
            line += "; " + ", ".join(f"{k}={v:,}" for k, v in self.counters.items())
        if self.notes:
            line += "; " + " ".join(self.notes)
        return line

    def __repr__(self) -> str:
        return f"<RunResult {self.summary()}>"


def _add_row(acc: dict[float, dict[str, Any]], row: dict[str, Any]) -> None:
    t = row["t"]
    if t not in acc:
        acc[t] = dict(row)
        return
    cur = acc[t]
    n0, n1 = cur.get("ops", 0), row.get("ops", 0)
    for k, v in row.items():
        if k in ("t", "seconds"):
            continue
        if k in ("p50_ms", "p99_ms"):
            # an ops-weighted average of per-worker percentiles: good enough for a live plot;
            # exact figures come from the merged HDR histograms
            a, b = cur.get(k, float("nan")), v
            if n0 + n1 and not (np.isnan(a) and np.isnan(b)):
                cur[k] = float(
                    np.nansum([a * n0, b * n1])
                    / max(1, (n0 if not np.isnan(a) else 0) + (n1 if not np.isnan(b) else 0))
                )
            continue
        cur[k] = cur.get(k, 0) + v
    cur["seconds"] = max(cur.get("seconds", 0), row.get("seconds", 0))


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def now() -> float:
    return time.perf_counter()
