"""Every widget of notebooks 09 and 10 at its minimum and its maximum, on the real servers (CI profile).

A learner can drag any slider to either end; each end must run to a sane result, not crash (lesson 10's herd at
200 readers used to die with Postgres' "too many clients already"). The other knobs stay at the CI profile's
values; sweeps are cut to one point so the ends stay cheap. The ranges are read from the notebooks' ui.panel
calls, so a widened range is tested without editing this file."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from labkit.lessons import caching
from labkit.lessons import thundering_herd as herd

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def panel_ranges(notebook: str) -> dict[str, dict[str, tuple]]:
    """{panel function: {knob: (lo, hi[, step])}} from the notebook's `ui.panel(fn, knob=(lo, hi), ...)` calls."""
    nb = json.loads((NOTEBOOKS / notebook).read_text())
    out: dict[str, dict[str, tuple]] = {}
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        for call in ast.walk(ast.parse(src)) if "ui.panel(" in src else []:
            if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "panel":
                out[call.args[0].id] = {
                    k.arg: ast.literal_eval(k.value) for k in call.keywords if isinstance(k.value, ast.Tuple)
                }
    return out


def ends(rng: tuple) -> tuple:
    return rng[0], rng[1]


@pytest.fixture(scope="module")
def data(pg):
    return caching.prepare(pg.dsn, "ci")


@pytest.fixture(scope="module")
def ranges():
    r09, r10 = panel_ranges("09-caching.ipynb"), panel_ranges("10-thundering-herd.ipynb")
    assert set(r09) == {"hit_ratio_vs_skew", "hit_ratio_vs_size", "hit_ratio_vs_ttl"}, r09
    assert set(r10) == {"herd_experiment"}, r10
    return {**r09, **r10}


def sane_sweep(df, reads: int) -> None:
    assert len(df) == 1 and int(df["reads"].iloc[0]) == reads
    assert 0 <= df["hit_ratio"].iloc[0] <= 1 and df["db_queries"].iloc[0] == df["misses"].iloc[0]


def test_lesson_09_skew_panel_at_both_ends(stack, data, ranges):
    r = ranges["hit_ratio_vs_skew"]
    assert set(r) == {"cache_mb", "reads"}
    before = set(stack.services)  # the session's stack may hold other tests' servers too
    for mb in ends(r["cache_mb"]):
        df = caching.skew_sweep(stack, data, skews=[1.0], memory_mb=mb, reads=2000, warmup=1000)
        sane_sweep(df, 2000)
        assert df["cache_mb"].iloc[0] == pytest.approx(mb, abs=0.5)
    for reads in ends(r["reads"]):  # the largest run is the slider's whole length; no warm-up to keep it short
        sane_sweep(caching.skew_sweep(stack, data, skews=[1.2], reads=reads, warmup=0), reads)
    assert set(stack.services) == before  # every sized cache was removed again


def test_lesson_09_size_panel_at_both_ends(stack, data, ranges):
    r = ranges["hit_ratio_vs_size"]
    assert set(r) == {"skew", "reads"}
    small = caching.defaults()["small_mb"]
    for skew in ends(r["skew"]):
        sane_sweep(caching.size_sweep(stack, data, sizes_mb=[small], skew=skew, reads=2000, warmup=1000), 2000)
    for reads in ends(r["reads"]):
        sane_sweep(caching.size_sweep(stack, data, sizes_mb=[small], skew=1.2, reads=reads, warmup=0), reads)


def test_lesson_09_ttl_panel_at_both_ends(stack, data, ranges):
    d = caching.defaults()
    r = ranges["hit_ratio_vs_ttl"]
    assert set(r) == {"reads_per_s", "seconds_per_ttl"}
    for rate in ends(r["reads_per_s"]):
        df = caching.ttl_sweep(stack, data, ttls=[1], rate=rate, seconds=d["ttl_seconds"])
        assert 0 < df["reads_per_s"].iloc[0] <= rate * 1.1 and 0 <= df["hit_ratio"].iloc[0] <= 1
    for seconds in ends(r["seconds_per_ttl"]):
        df = caching.ttl_sweep(stack, data, ttls=[1], rate=d["ttl_rate"], seconds=seconds)
        assert df["reads"].iloc[0] > 0 and 0 <= df["hit_ratio"].iloc[0] <= 1


def test_lesson_10_widgets_at_both_ends(mc, pg, data, ranges, capsys):
    """The herd at every end of its three sliders, all four strategies; at 200 readers the claims still hold."""
    d = herd.defaults()
    r = ranges["herd_experiment"]
    assert set(r) == {"readers", "recompute_s", "invalidations"}
    hot = herd.hot_post(data)

    def run(readers: int = d["readers"], cost: float = d["cost"], invalidations: int = d["invalidations"]):
        # what the notebook's herd_experiment does, with its interval rule
        return herd.compare(
            mc.address,
            pg.dsn,
            hot,
            readers=readers,
            cost=cost,
            invalidations=invalidations,
            interval=max(d["interval"], 3 * cost),
            think=d["think"],
        )

    lo, hi = ends(r["readers"])
    big = run(readers=hi, invalidations=2)
    for res in big.values():
        assert res.readers == hi and res.invalidations == 2 and res.db_queries >= 2
    herd.check_leases_cut_queries(big["none"], big["lease"], factor=10)
    assert big["lease"].db_queries_per_invalidation <= 2 and big["stale"].db_queries_per_invalidation <= 2
    assert capsys.readouterr().out.count("PASS  ") == 2
    print_figures("200 readers", big)
    for res in run(readers=lo, invalidations=2).values():  # one reader: exactly one recompute per invalidation
        assert res.db_queries == res.invalidations == 2 and res.stale_reads == 0
    for cost in ends(r["recompute_s"]):
        for res in run(readers=8, cost=cost, invalidations=1).values():
            assert res.invalidations == 1 and res.db_queries >= 1
    for n in ends(r["invalidations"]):
        res = herd.run_herd(
            mc.address, pg.dsn, hot, "lease", readers=8, invalidations=n, interval=0.3, cost=0.02, think=d["think"]
        )
        assert res.invalidations == n and n <= res.db_queries <= 2 * n


def print_figures(label: str, results: dict) -> None:
    import sys

    line = ", ".join(f"{k} {v.db_queries_per_invalidation:.1f}" for k, v in results.items())
    sys.__stdout__.write(f"\nherd at {label}: DB queries per invalidation: {line}\n")
