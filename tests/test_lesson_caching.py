"""Lesson 09 (caching) on real Postgres and memcached: models, experiments, checkpoints that can fail,
the stale-set race, and the exercise's self-check against the reference and against wrong solutions."""

from __future__ import annotations

import pandas as pd
import pytest

from labkit.datasets import instagram
from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import caching
from labkit.lessons._solutions import caching as solution

# ----------------------------------------------------------------------------------- models and data


def test_dataset_is_deterministic_and_zipf_popular():
    a, b = instagram.generate("ci", seed=7), instagram.generate("ci", seed=7)
    assert a.posts == b.posts and a.likes == b.likes
    assert instagram.generate("ci", seed=8).likes != a.likes
    counts = sorted((p[3] for p in a.posts), reverse=True)
    # the hottest 1% of posts carry a large share of the likes; the median post has almost none
    assert sum(counts[: len(counts) // 100]) > 0.3 * sum(counts)
    assert counts[len(counts) // 2] <= 3
    with pytest.raises(BadParameter, match="skew"):
        instagram.zipf_probabilities(10, -1)


def test_che_approximation_agrees_with_exact_lru_simulation():
    n, cap = 2000, 200
    for s in (0.7, 1.0, 1.2):
        trace = instagram.zipf_trace(n, s, 60_000, seed=3)
        sim = caching.lru_hit_ratio(trace, cap, warmup=10_000)
        che = caching.che_hit_ratio(instagram.zipf_probabilities(n, s), cap)
        assert abs(sim - che) < 0.02, (s, sim, che)
    assert caching.che_hit_ratio(instagram.zipf_probabilities(10, 1.0), 10) == 1.0
    assert caching.che_hit_ratio(instagram.zipf_probabilities(10, 1.0), 0) == 0.0


# -------------------------------------------------------------------------------- on the real servers


@pytest.fixture(scope="module")
def data(pg):
    return caching.prepare(pg.dsn, "ci")


@pytest.fixture(scope="module")
def small_cache(stack):
    with caching.sized_cache(stack, 2) as addr:
        yield addr


@pytest.fixture(scope="module")
def skew_df(small_cache, pg, data):
    with caching.PostStore(pg.dsn) as store:
        rows = [caching.hit_ratio_run(small_cache, store, data, skew=s, reads=4000, warmup=3000) for s in (0.8, 1.1)]
    return pd.DataFrame(rows)


def test_cache_aside_hit_ratio_checkpoints_pass(skew_df, capsys):
    caching.check_db_follows_hit_ratio(skew_df)
    caching.check_small_cache_serves_most(skew_df, skew=1.1)
    caching.check_model_matches(skew_df)
    out = capsys.readouterr().out.splitlines()
    assert out and all(line.startswith("PASS  ") for line in out) and len(out) == 4
    low, high = skew_df.iloc[0], skew_df.iloc[1]
    assert high["hit_ratio"] > low["hit_ratio"]  # more skew, more hits, same cache
    assert high["db_queries"] < low["db_queries"]  # ... and fewer trips to Postgres
    assert 0.05 < high["cache_fraction"] <= 0.105  # 2 MB holds ~9% of the CI profile's posts


def _read_that_ignores_hits(mc, store, post_id, ttl):
    """Broken cache-aside: fills the cache but always queries Postgres."""
    card = store.render(post_id)
    mc.set(caching.post_key(post_id), card)
    mc.get(caching.post_key(post_id))
    return card


def _read_that_never_sets(mc, store, post_id, ttl):
    """Broken cache-aside: forgets to set the card after a miss."""
    r = mc.get(caching.post_key(post_id))
    return r.value if r.hit else store.render(post_id)


def test_db_checkpoint_fails_when_hits_still_query_postgres(small_cache, pg, data):
    with caching.PostStore(pg.dsn) as store:
        row = caching.hit_ratio_run(
            small_cache, store, data, skew=1.1, reads=1500, warmup=1500, read=_read_that_ignores_hits
        )
    assert row["hit_ratio"] > 0.5 and row["db_queries"] == 1500
    with pytest.raises(CheckpointFailed, match=r"DB queries fall .*: 1500 is not within 5% of expected") as err:
        caching.check_db_follows_hit_ratio(pd.DataFrame([row]))
    assert "hit ratio" in str(err.value)


def test_small_cache_checkpoint_fails_without_a_cache(small_cache, pg, data):
    with caching.PostStore(pg.dsn) as store:
        row = caching.hit_ratio_run(
            small_cache, store, data, skew=1.1, reads=1500, warmup=500, read=_read_that_never_sets
        )
    assert row["hit_ratio"] == 0
    with pytest.raises(CheckpointFailed, match=r"serves most reads: 0 < expected 0.5 at zipf s=1.1"):
        caching.check_small_cache_serves_most(pd.DataFrame([row]), skew=1.1)


def _read_with_a_varying_key(mc, store, post_id, ttl):
    """Broken cache-aside: the key changes on every read (a timestamp in it), so nothing is ever hit."""
    import time

    key = f"{caching.post_key(post_id)}:{time.perf_counter_ns()}"
    r = mc.get(key)
    if r.hit:
        return r.value
    card = store.render(post_id)
    mc.set(key, card)
    return card


def test_model_checkpoint_fails_when_the_cache_is_full_but_never_hit(small_cache, pg, data):
    with caching.PostStore(pg.dsn) as store:
        row = caching.hit_ratio_run(
            small_cache, store, data, skew=1.1, reads=1000, warmup=1000, read=_read_with_a_varying_key
        )
    assert row["hit_ratio"] == 0 and row["cached_cards"] > 300  # full of cards nobody asks for again
    with pytest.raises(
        CheckpointFailed,
        match=r"Che model at every point: 0.\d+ > expected at most 0.08 "
        r"at worst at s=1.1.*measured 0.000 vs model 0.\d+",
    ):
        caching.check_model_matches(pd.DataFrame([row]))


def test_latency_cache_hit_faster_than_postgres(small_cache, pg, data):
    with caching.PostStore(pg.dsn) as store:
        lat = caching.latency_compare(small_cache, store, data, reads=600)
    # a hit is one memcached round trip; a miss is a multi-table query: compare within the same run
    assert lat["cache hit"]["p50_ms"] < lat["postgres only"]["p50_ms"]
    assert lat["cache hit"]["reads"] + lat["cache miss (get + query + set)"]["reads"] == 600
    caching.check_latency(lat)
    # the claim can fail: with the roles swapped (the "cache" path being Postgres) it is refuted
    swapped = {"cache hit": lat["postgres only"], "postgres only": lat["cache hit"]}
    with pytest.raises(CheckpointFailed, match=r"faster than a Postgres read \(median\): 0\.\d+ < expected 1.5"):
        caching.check_latency(swapped)


def test_stale_set_race_reproduced_and_fixed(mc, pg, data, capsys):
    naive = caching.stale_set_race(mc.address, pg.dsn, data, fixed=False, trials=3)
    fixed = caching.stale_set_race(mc.address, pg.dsn, data, fixed=True, trials=3)
    assert all(o.stale and o.set_status == "HD" for o in naive)
    assert all(not o.stale and o.set_status == "NF" for o in fixed)
    caching.check_race(naive, fixed)
    assert capsys.readouterr().out.count("PASS  ") == 2
    # each claim can fail: swap the runs and both are refuted with the counts in the message
    with pytest.raises(CheckpointFailed, match=r"reproduced with plain get/set: 0 < expected 3"):
        caching.check_race(fixed, fixed)
    with pytest.raises(CheckpointFailed, match=r"no stale data: 3 > expected at most 0 at 3 of 3"):
        caching.check_race(naive, naive)


# ---------------------------------------------------------------------------------------- exercise


def test_exercise_reference_solution_passes(mc, pg, data, capsys):
    caching.check_cache_aside(solution.read_post, solution.like_post, mc.address, pg.dsn, data)
    assert capsys.readouterr().out == "PASS  exercise: cache-aside read path and invalidation on write\n"


def test_exercise_fails_without_set(mc, pg, data):
    def read_post(mc_, db, post_id):
        r = mc_.get(caching.post_key(post_id))
        return r.value if r.hit else db.render(post_id)

    with pytest.raises(CheckpointFailed, match=r"memcached has nothing under 'post:\d+': set the card"):
        caching.check_cache_aside(read_post, solution.like_post, mc.address, pg.dsn, data)


def test_exercise_fails_without_invalidation(mc, pg, data):
    def like_post(mc_, db, post_id, user_id):
        db.like(post_id, user_id)

    with pytest.raises(CheckpointFailed, match=r"cache still holds version (\d+) of post:\d+ while Postgres has"):
        caching.check_cache_aside(solution.read_post, like_post, mc.address, pg.dsn, data)


def test_exercise_fails_when_hits_query_postgres(mc, pg, data):
    def read_post(mc_, db, post_id):
        card = db.render(post_id)
        mc_.set(caching.post_key(post_id), card)
        return card

    with pytest.raises(CheckpointFailed, match=r"second read of post:\d+ ran 1 query\(ies\) on Postgres"):
        caching.check_cache_aside(read_post, solution.like_post, mc.address, pg.dsn, data)


def test_exercise_not_attempted_says_so(mc, pg, data, capsys):
    def read_post(mc_, db, post_id):
        raise NotImplementedError

    caching.check_cache_aside(read_post, solution.like_post, mc.address, pg.dsn, data)
    assert "Not attempted yet" in capsys.readouterr().out


def test_race_table_is_tidy(mc, pg, data):
    df = caching.race_table(caching.stale_set_race(mc.address, pg.dsn, data, fixed=True, trials=1))
    assert list(df["reader's late set"]) == ["NF"] and df["cached version"].isna().all()


def test_ttl_hit_ratio_follows_expiry_model_and_can_fail(stack, pg, data, capsys):
    with caching.sized_cache(stack, 30) as addr, caching.PostStore(pg.dsn) as store:
        rows = [caching.ttl_run(addr, store, data, ttl=t, rate=300, seconds=2.0) for t in (1, 3)]
        # a read path that forgets the TTL: cards never expire, far more hits than expiry allows
        never = caching.ttl_run(
            addr,
            store,
            data,
            ttl=1,
            rate=300,
            seconds=2.0,
            read=lambda mc_, st_, pid, ttl: caching.read_through(mc_, st_, pid, 0),
        )
    df = pd.DataFrame(rows)
    assert df["evictions"].sum() == 0 and df["hit_ratio"].iloc[1] > df["hit_ratio"].iloc[0]
    caching.check_ttl_model(df)
    assert capsys.readouterr().out == "PASS  hit ratio vs TTL within 0.08 of the expiry model\n"
    with pytest.raises(CheckpointFailed, match=r"expiry model: 0\.\d+ > expected at most 0.08 at worst at TTL 1 s"):
        caching.check_ttl_model(pd.DataFrame([never]))
