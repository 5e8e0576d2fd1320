"""Key distributions, op mixes and workload validation (pure maths: no server needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from labkit.errors import BadParameter
from labkit.load import HotSpot, OpMix, Trace, Uniform, Workload, Zipf
from labkit.load.drivers import consistency_level

N_DRAWS = 100_000


@pytest.mark.parametrize("s", [0.0, 0.7, 0.99, 1.3])
def test_zipf_frequencies_follow_the_law(s: float) -> None:
    n = 100
    ranks = Zipf(n, s).sample(np.random.default_rng(7), N_DRAWS)
    observed = np.bincount(ranks, minlength=n) / N_DRAWS
    expected = np.arange(1, n + 1) ** -s / np.sum(np.arange(1, n + 1) ** -s)
    # every frequency within 5 binomial standard deviations (plus a little absolute slack)
    sd = np.sqrt(expected * (1 - expected) / N_DRAWS)
    worst = np.max(np.abs(observed - expected) / (5 * sd + 1e-4))
    assert worst < 1, f"s={s}: a rank's frequency deviates {worst:.2f}x the tolerance from Zipf's law"
    # and the slope on a log-log plot of the top ranks recovers s
    if s > 0:
        top = np.arange(1, 11)
        slope = np.polyfit(np.log(top), np.log(observed[:10]), 1)[0]
        assert abs(-slope - s) < 0.1, f"fitted exponent {-slope:.3f} vs s={s}"


def test_zipf_top_share_matches_pmf() -> None:
    z = Zipf(1000, 1.0)
    ranks = z.sample(np.random.default_rng(1), N_DRAWS)
    assert abs(np.mean(ranks < 10) - z.top_share(10)) < 0.01
    assert z.top_share(1000) == pytest.approx(1.0)


def test_uniform_and_hotspot() -> None:
    rng = np.random.default_rng(3)
    u = Uniform(50).sample(rng, N_DRAWS)
    assert u.min() == 0 and u.max() == 49
    assert np.bincount(u).std() / (N_DRAWS / 50) < 0.05
    h = HotSpot(1000, hot_keys=0.1, hot_ops=0.9)
    hs = h.sample(rng, N_DRAWS)
    assert abs(np.mean(hs < 100) - 0.9) < 0.01
    assert h.pmf().sum() == pytest.approx(1.0)


def test_seed_reproduces_the_sequence_and_clients_differ() -> None:
    wl = Workload(keys=Zipf(1000, 0.9), mix={"get": 0.8, "set": 0.2}, seed=42, value_size=(10, 20))
    a = [(o.kind, o.key, o.value) for o in itertools.islice(wl.stream(0), 500)]
    b = [(o.kind, o.key, o.value) for o in itertools.islice(wl.stream(0), 500)]
    c = [(o.kind, o.key, o.value) for o in itertools.islice(wl.stream(1), 500)]
    other = Workload(keys=Zipf(1000, 0.9), mix={"get": 0.8, "set": 0.2}, seed=43, value_size=(10, 20))
    d = [(o.kind, o.key, o.value) for o in itertools.islice(other.stream(0), 500)]
    assert a == b
    assert a != c and a != d
    sets = [v for k, _, v in a if k == "set"]
    assert sets and all(10 <= len(v) <= 20 for v in sets)
    assert all(v is None for k, _, v in a if k == "get")


def test_op_mix_ratio() -> None:
    wl = Workload(mix=OpMix.read_write(0.95), seed=1)
    kinds = [o.kind for o in itertools.islice(wl.stream(0), 20_000)]
    assert abs(kinds.count("read") / len(kinds) - 0.95) < 0.01


def test_poisson_arrivals_have_the_target_rate() -> None:
    wl = Workload(rate=1000, duration=1)
    times = np.fromiter(itertools.islice(wl.arrivals(np.random.default_rng(0)), 20_000), float)
    gaps = np.diff(times)
    assert abs(len(times) / times[-1] - 1000) < 30
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential gaps: coefficient of variation 1


def test_trace_replays_in_order() -> None:
    t = Trace(["a", "b", "a", "c", "a"])
    wl = Workload(keys=t, key_format="user:{}")
    assert t.names[0] == "a" and t.n == 3
    ops = list(itertools.islice(wl.stream(0), 10))
    assert [o.key for o in ops] == [f"user:{k}" for k in ["a", "b", "a", "c", "a"] * 2]
    assert [o.rank for o in ops][:3] == [0, 1, 0]  # 'a' is the most frequent key


def test_split_across_processes() -> None:
    parts = Workload(clients=7, rate=700, ops=700).split(3)
    assert [p.clients for p in parts] == [3, 2, 2]
    assert sum(p.rate for p in parts) == pytest.approx(700)
    assert len({p.seed for p in parts}) == 3


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"clients": -1}, "clients"),
        ({"clients": 0}, "clients"),
        ({"rate": 0}, "rate"),
        ({"rate": -5}, "rate"),
        ({"duration": None, "ops": None}, "duration"),
        ({"duration": 0}, "duration"),
        ({"ops": 0}, "ops"),
        ({"value_size": (10, 5)}, "value_size"),
        ({"mix": {}}, "mix"),
        ({"mix": {"get": -1}}, "share"),
        ({"key_format": "nokey"}, "key_format"),
    ],
)
def test_bad_workload_parameters_name_the_fix(kwargs: dict, words: str) -> None:
    with pytest.raises(BadParameter, match=words):
        Workload(**kwargs)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: Zipf(100, -0.5), ">= 0"),
        (lambda: Zipf(0, 1.0), "n"),
        (lambda: HotSpot(100, hot_keys=0), "hot_keys"),
        (lambda: HotSpot(100, hot_keys=1.0, hot_ops=0.5), "hot_keys"),
        (lambda: Trace([]), "empty"),
        (lambda: consistency_level("MOSTLY"), "QUORUM"),
    ],
)
def test_bad_distribution_and_consistency_parameters(make, words: str) -> None:
    with pytest.raises(BadParameter, match=words):
        make()


def test_consistency_level_names() -> None:
    from cassandra import ConsistencyLevel

    assert consistency_level("local_quorum") == ConsistencyLevel.LOCAL_QUORUM
    assert consistency_level("ONE") == ConsistencyLevel.ONE
