"""Standard plots: latency CDF and percentiles, throughput over time, a metric vs a swept
parameter with a model curve. Each function takes results (RunResult or a list of them, or a
DataFrame for sweeps), draws on ``ax`` (a new figure when None) and returns the Axes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from labkit.errors import BadParameter

__all__ = ["latency_cdf", "percentiles", "throughput", "sweep", "live_figure"]


def _axes(ax: Any = None, figsize: tuple[float, float] = (6.4, 3.6)) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _as_list(results: Any) -> list[Any]:
    if results is None:
        raise BadParameter("no results to plot: pass a RunResult or a list of them")
    return list(results) if isinstance(results, (list, tuple)) else [results]


def _label(res: Any, labels: Sequence[str] | None, i: int) -> str:
    return labels[i] if labels is not None else res.name


def cdf_points(hist: Any) -> tuple[np.ndarray, np.ndarray]:
    """(latency ms, cumulative fraction) at every recorded HDR bucket."""
    total = hist.get_total_count()
    if total == 0:
        return np.empty(0), np.empty(0)
    vals, cum = [], []
    for item in hist.get_recorded_iterator():
        vals.append(item.value_iterated_to / 1000.0)
        cum.append(item.total_count_to_this_value / total)
    return np.asarray(vals), np.asarray(cum)


def latency_cdf(
    results: Any, *, ax: Any = None, labels: Sequence[str] | None = None, kind: str | None = None, tail: bool = False
) -> Any:
    """Latency CDF per result. ``tail=True`` plots 1-CDF on a log scale (where p99/p999 live)."""
    ax = _axes(ax)
    for i, res in enumerate(_as_list(results)):
        hist = res.histogram if kind is None else res.hists[kind]
        x, y = cdf_points(hist)
        if len(x) == 0:
            continue
        ax.step(x, 1 - y if tail else y, where="post", label=_label(res, labels, i))
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    if tail:
        ax.set_yscale("log")
        ax.set_ylabel("fraction slower (1 - CDF)")
    else:
        ax.set_ylabel("fraction of operations ≤ latency")
        ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Latency distribution")
    return ax


def percentiles(
    results: Any,
    *,
    ax: Any = None,
    labels: Sequence[str] | None = None,
    which: Sequence[str] = ("p50", "p90", "p99", "p999", "max"),
) -> Any:
    """Latency percentiles per result as grouped bars (ms, log scale)."""
    ax = _axes(ax)
    res_list = _as_list(results)
    width = 0.8 / len(res_list)
    x = np.arange(len(which))
    for i, res in enumerate(res_list):
        p = res.percentiles()
        ax.bar(x + i * width - 0.4 + width / 2, [p[w] for w in which], width, label=_label(res, labels, i))
    ax.set_xticks(x, [w.replace("p999", "p99.9") for w in which])
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_xlabel("percentile")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Latency percentiles")
    return ax


def throughput(
    results: Any, *, ax: Any = None, labels: Sequence[str] | None = None, errors: bool = True, latency: bool = False
) -> Any:
    """Successful ops/s per interval over time; failed ops/s in red; optionally p99 on a second axis."""
    ax = _axes(ax)
    for i, res in enumerate(_as_list(results)):
        df = res.to_frame() if hasattr(res, "to_frame") else res
        if len(df) == 0:
            continue
        t = df["t"] + df["seconds"] / 2 if "seconds" in df else df["t"]
        ax.plot(t, df["ops_per_s"], marker=".", label=f"{_label(res, labels, i)} ok")
        if errors and df["errors"].sum() > 0:
            ax.plot(
                t,
                df["errors"] / df["seconds"],
                color="tab:red",
                marker="x",
                linestyle="--",
                label=f"{_label(res, labels, i)} errors",
            )
        if latency:
            ax2 = getattr(ax, "_labkit_twin", None) or ax.twinx()
            ax._labkit_twin = ax2
            ax2.plot(t, df["p99_ms"], color="tab:gray", alpha=0.6, label="p99")
            ax2.set_ylabel("p99 latency (ms)")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("throughput (ops/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Throughput over time")
    return ax


def sweep(
    data: Any,
    x: str,
    y: str,
    *,
    ax: Any = None,
    model: Callable[[np.ndarray], np.ndarray] | tuple[Iterable[float], Iterable[float]] | None = None,
    model_label: str = "model",
    hue: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    logx: bool = False,
) -> Any:
    """A measured metric ``y`` vs a swept parameter ``x`` (points) with a model curve (line).

    data: a DataFrame, a list of dicts, or a list of RunResult (their ``row()``).
    model: a function of x (drawn smoothly over the measured range) or (xs, ys) points.
    Give xlabel/ylabel with units, e.g. ylabel="throughput (ops/s)".
    """
    import pandas as pd

    if isinstance(data, list) and data and hasattr(data[0], "row"):
        data = [r.row() for r in data]
    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    for col in (x, y) + ((hue,) if hue else ()):
        if col not in df.columns:
            raise BadParameter(f"column {col!r} not in the sweep data: columns are {list(df.columns)}")
    ax = _axes(ax)
    groups = df.groupby(hue) if hue else [(None, df)]
    for key, g in groups:
        g = g.sort_values(x)
        ax.plot(g[x], g[y], "o", label=f"measured ({hue}={key!s})" if hue else "measured")
    if model is not None:
        if callable(model):
            lo, hi = float(df[x].min()), float(df[x].max())
            xs = np.geomspace(lo, hi, 200) if logx and lo > 0 else np.linspace(lo, hi, 200)
            ys = model(xs)
        else:
            xs, ys = (np.asarray(list(v), dtype=float) for v in model)
        ax.plot(xs, ys, "-", color="black", alpha=0.7, label=model_label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def live_figure(rows: list[dict[str, Any]], title: str = "") -> Any:
    """The panel's live view: throughput and p99 per interval so far (a new Figure, not shown)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.8), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    if rows:
        t = np.array([r["t"] for r in rows])
        secs = np.array([r.get("seconds", 1.0) for r in rows])
        ops = np.array([r.get("ops", 0) for r in rows])
        errs = np.array([r.get("errors", 0) for r in rows])
        ax.plot(t, ops / secs, marker=".", label="ok")
        if errs.sum():
            ax.plot(t, errs / secs, "x--", color="tab:red", label="errors")
        ax2.plot(t, [r.get("p50_ms", np.nan) for r in rows], marker=".", label="p50")
        ax2.plot(t, [r.get("p99_ms", np.nan) for r in rows], marker=".", label="p99")
        ax.legend(fontsize="small")
        ax2.legend(fontsize="small")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("throughput (ops/s)")
    ax.set_ylim(bottom=0)
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("latency (ms)")
    for a in (ax, ax2):
        a.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig
