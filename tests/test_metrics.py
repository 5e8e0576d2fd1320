"""HDR histogram maths against numpy, interval rows, merging of workers, the result's views."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.errors import BadParameter
from labkit.load.metrics import Recorder, RunResult, hist_percentiles, new_histogram, record_many


def _lognormal_us(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(mean=np.log(500), sigma=0.8, size=n).astype(np.int64) + 1


@pytest.mark.parametrize("p", [50, 90, 99, 99.9])
def test_bulk_recording_matches_numpy_percentiles(p: float) -> None:
    lat = _lognormal_us(200_000, 1)
    h = new_histogram()
    record_many(h, lat)
    assert h.get_total_count() == len(lat)
    got = h.get_value_at_percentile(p)
    # the p-th percentile as HDR defines it: the value of rank ceil(p% of n) in sorted order
    exact = np.sort(lat)[int(np.ceil(round(p / 100 * len(lat), 6))) - 1]
    # 3 significant digits: within 0.2% (plus 1 µs for small values)
    assert abs(got - exact) <= exact * 0.002 + 1, f"p{p}: hdr {got} vs numpy {exact}"


def test_bulk_equals_one_by_one() -> None:
    lat = _lognormal_us(5_000, 2)
    a, b = new_histogram(), new_histogram()
    record_many(a, lat)
    for v in lat.tolist():
        b.record_value(int(v))
    for p in (1, 50, 99, 99.99, 100):
        assert a.get_value_at_percentile(p) == b.get_value_at_percentile(p)


def test_recorder_rows_and_merge_across_workers() -> None:
    recs = []
    lat_all = []
    for w in range(3):
        rec = Recorder(t0=0.0, interval=1.0)
        lat = _lognormal_us(3_000, 10 + w)
        lat_all.append(lat)
        for i, v in enumerate(lat.tolist()):
            rec.ok("get" if i % 4 else "set", v * 1000)
            if i == 1_000:
                rec.flush(1.0)  # end of interval 0
        rec.error(ConnectionResetError("peer reset"), now=1.5, disconnect=True)
        rec.count("db_queries", 7)
        rec.flush(1.8, final=True)
        recs.append(rec)
    res = RunResult.from_recorders("t", {"clients": 3, "loop": "closed"}, 2.0, recs)
    assert res.ops == 9_000
    assert res.errors == {"ConnectionResetError": 3}
    assert res.counters == {"db_queries": 21}
    df = res.to_frame()
    assert list(df["t"]) == [0.0, 1.0] and df["ops"].sum() == 9_000 and df["errors"].sum() == 3
    assert df["db_queries"].sum() == 21
    merged = np.concatenate(lat_all)
    assert res.percentiles()["p99"] == pytest.approx(np.percentile(merged, 99) / 1000, rel=0.01)
    assert res.throughput == pytest.approx(4500)
    assert set(res.latency_frame().index) == {"get", "set", "all"}
    assert "ConnectionResetError x3" in res.summary() and "db_queries=21" in res.summary()
    with pytest.raises(BadParameter, match="kinds are"):
        res.percentiles("delete")


def test_wire_roundtrip_and_merge() -> None:
    rec = Recorder(0.0, 1.0)
    for v in range(1, 1001):
        rec.ok("get", v * 1000)
    rec.flush(1.0, final=True)
    a = RunResult.from_recorders("a", {}, 1.0, [rec])
    b = RunResult.from_wire(a.to_wire())
    assert b.percentiles() == a.percentiles()
    a.merge(b)
    assert a.ops == 2000 and a.to_frame()["ops"].sum() == 2000


def test_empty_histogram_is_nan_not_crash() -> None:
    assert np.isnan(hist_percentiles(new_histogram())["p50"])


def test_closed_loop_obeys_littles_law_and_sweep_collects_rows() -> None:
    """Runner timing checked against Little's law (clients = throughput x mean latency) on an op
    whose latency is a sleep: a property of the measurement, not of the machine's speed."""
    import asyncio

    from labkit.load import run, sweep

    async def op(o):
        await asyncio.sleep(0.004)

    df = sweep(lambda clients: run(op, clients=clients, duration=0.8), "clients", [1, 6], show_progress=False)
    assert list(df["clients"]) == [1, 6] and len(df.attrs["results"]) == 2
    for _, row in df.iterrows():
        in_system = row["throughput"] * row["mean_ms"] / 1000
        assert abs(in_system - row["clients"]) / row["clients"] < 0.15, (
            f"Little's law: {row['throughput']:.0f}/s x {row['mean_ms']:.2f} ms = {in_system:.2f} "
            f"!= {row['clients']} clients"
        )
    assert df["throughput"].iloc[1] > 3 * df["throughput"].iloc[0]


def test_open_loop_counts_queueing_delay() -> None:
    """Open loop at a rate above what one connection can serve: latency includes waiting, so it
    grows far beyond the service time (coordinated omission avoided)."""
    import time

    from labkit.load import run

    def op(o):
        time.sleep(0.004)  # one connection serves at most ~250/s

    res = run(op, clients=1, rate=400, duration=1.0)
    assert res.percentiles()["p99"] > 10 * 4, res.summary()  # queue builds: p99 >> 4 ms service time
