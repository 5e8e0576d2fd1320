"""What the panels of lessons 00, 09 and 10 show: their views, progress, the 09 size sweep that the trace
can fill, and lesson 00's connect time apart from the round trip — on the real servers."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from labkit.datasets import instagram  # noqa: E402
from labkit.errors import BadParameter  # noqa: E402
from labkit.lessons import caching, setup  # noqa: E402
from labkit.lessons import thundering_herd as herd  # noqa: E402
from labkit.ui import view  # noqa: E402


@pytest.fixture(scope="module")
def data(pg):
    return caching.prepare(pg.dsn, profile="ci")


@pytest.mark.parametrize("n_keys, reads", [(5000, 12_000), (50_000, 60_000), (5000, 3000)])
def test_fillable_sizes_stay_below_the_posts_the_trace_reads(n_keys: int, reads: int) -> None:
    sizes = caching.fillable_sizes_mb(n_keys, 1.0, reads, 2)
    trace = instagram.zipf_trace(n_keys, 1.0, reads, seed=9)
    distinct = len(np.unique(trace))
    assert sizes == sorted(set(sizes)) and sizes[0] == 2
    assert sizes[-1] * caching.items_per_mb() <= 0.85 * distinct or sizes == [2], (sizes, distinct)
    # the old choice (up to 5x the small cache) overshot what the full profile's trace reads
    if n_keys == 50_000:
        assert 110 * caching.items_per_mb() > distinct


def test_size_sweep_points_are_different_caches(stack, data) -> None:
    """Every size of the sweep fills (its capacity is below the posts read) and gives its own row."""
    seen = []
    df = caching.size_sweep(
        stack, data, skew=0.8, reads=1500, warmup=1000, progress=lambda f, text=None: seen.append((round(f, 2), text))
    )
    assert len(df) >= 3, df
    assert df["cached_cards"].is_monotonic_increasing and df["cached_cards"].is_unique, df["cached_cards"]
    assert (df["cached_cards"] < df["keys"]).all()
    assert df["hit_ratio"].is_monotonic_increasing, df["hit_ratio"]
    assert [f for f, _ in seen] == [round((i + 1) / len(df), 2) for i in range(len(df))]
    assert all(text.endswith("MB done") for _, text in seen)
    items = view.render(caching.view_sweep(df, x="cache_fraction"))
    assert [type(i).__name__ for i in items] == ["HTML", "Image"]
    assert "share of posts cached" in items[0].data


def test_ttl_view_names_its_columns(stack, data) -> None:
    df = caching.ttl_sweep(stack, data, ttls=[1], rate=200.0, seconds=1.0)
    t = caching.ttl_table(df)
    assert list(t.columns)[:3] == ["TTL (s)", "target reads/s", "reads/s achieved"]
    assert t["target reads/s"].iloc[0] == 200.0
    assert len(view.render(caching.view_ttl(df))) == 2


def test_herd_view_and_progress(mc, pg, data) -> None:
    seen = []
    res = herd.compare(
        mc,
        pg.dsn,
        herd.hot_post(data),
        strategies=["none", "lease"],
        readers=2,
        invalidations=1,
        cost=0.01,
        interval=0.2,
        think=0.01,
        progress=lambda f, t=None: seen.append(f),
    )
    assert seen == [0.5, 1.0]
    items = view.render(herd.view(res))
    assert [type(i).__name__ for i in items] == ["HTML", "Image", "Image"]
    assert "<td>2</td>" in items[0].data  # the readers column shows the run's value


def test_survey_separates_connect_from_round_trip(stack) -> None:
    t = setup.survey(stack, repeats=20)
    assert set(t.index) >= {"postgres", "memcached"} and t["answered"].all()
    assert (t["round trips"] == 20).all()
    pg = t.loc["postgres"]
    # a password exchange and a new backend process cost more than a SELECT on an open connection
    assert pg["connect (ms)"] > 2 * pg["round trip (ms, median)"], pg
    assert [type(i).__name__ for i in view.render(setup.view_survey(t))] == ["HTML", "Image"]
    with pytest.raises(BadParameter, match="between 1 and"):
        setup.survey(stack, repeats=0)
