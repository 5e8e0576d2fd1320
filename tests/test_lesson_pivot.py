"""Lesson 01 (the pivot) on real Postgres: the generator's planted effect, the load timings, the SQL
analysis recovering the truth at other seeds and sizes, checkpoints failing on broken inputs, the
exercise's self-check, and the panel's knobs at both ends of their ranges."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import psycopg
import pytest

from labkit.datasets import burbn
from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import pivot
from labkit.lessons._solutions import pivot as solution


@pytest.fixture(scope="module")
def planted(pg):
    # not the notebook's defaults: another seed, fewer users, more weeks, a smaller row-INSERT sample
    return pivot.run_pivot(pg.dsn, seed=7, users=3000, weeks=14, strength=1.0, insert_rows=300)


@pytest.fixture(scope="module")
def nothing(pg, planted):
    return pivot.run_pivot(pg.dsn, seed=12345, users=4000, weeks=10, strength=0.0, insert_rows=200)


def test_generator_is_deterministic_and_documented():
    a = burbn.generate(800, 8, strength=0.7, seed=3)
    b = burbn.generate(800, 8, strength=0.7, seed=3)
    assert a.rows == b.rows
    assert a.rows != burbn.generate(800, 8, strength=0.7, seed=4).rows
    ts = [r[2] for r in a.rows]
    assert ts == sorted(ts) and [r[0] for r in a.rows] == list(range(1, a.events + 1))
    assert {r[3] for r in a.rows} <= set(burbn.KINDS)
    # photo users' first event is a photo post; nobody else ever posts one
    first: dict[int, str] = {}
    for _, u, _, k in a.rows:
        first.setdefault(u, k)
    photo_ids = set(np.flatnonzero(a.user_is_photo) + 1)
    assert all(first[u] == "photo_post" for u in photo_ids if u in first)
    assert not any(k in burbn.PHOTO_FEATURES for _, u, _, k in a.rows if u not in photo_ids)
    assert a.true_gap(4) == pytest.approx(0.81**4 - 0.6**4)
    assert burbn.generate(800, 8, strength=0.0, seed=3).true_gap(4) == 0


def test_generator_rejects_bad_sizes():
    with pytest.raises(BadParameter, match="6..104 weeks"):
        burbn.generate(1000, 3)
    with pytest.raises(BadParameter, match=r"strength=1.5: .* \[0, 1\]"):
        burbn.generate(1000, 12, strength=1.5)
    with pytest.raises(BadParameter, match="number of users"):
        burbn.generate(10, 12)


def test_copy_is_at_least_10x_faster_than_row_inserts(planted, capsys):
    loads = planted.loads.set_index("method")
    assert list(loads.index) == ["row INSERT (autocommit)", "executemany (1000 rows/txn)", "COPY"]
    assert loads.loc["COPY", "rows"] == planted.log.events
    assert loads.loc["row INSERT (autocommit)", "rows"] == 300
    pivot.check_copy_faster(planted.loads)
    assert capsys.readouterr().out == "PASS  COPY loads at least 10x more rows/s than row-by-row INSERT\n"


def test_copy_checkpoint_fails_when_copy_is_no_faster(planted):
    broken = planted.loads.copy()
    broken.loc[broken["method"] == "COPY", "rows_per_s"] = float(broken["rows_per_s"].iloc[0]) * 3
    with pytest.raises(CheckpointFailed, match=r"at least 10x more rows/s .*: 3 < expected 10 at COPY"):
        pivot.check_copy_faster(broken)


def test_sql_recovers_the_planted_effect_at_another_seed(planted, capsys):
    assert planted.gap() == pytest.approx(planted.log.true_gap(4), abs=0.06)
    pivot.check_recovers_truth(planted)
    pivot.check_pivot_supported(planted)
    assert planted.supports_pivot() and "SUPPORTS" in pivot.verdict(planted)
    assert capsys.readouterr().out.count("PASS  ") == 4


def test_sql_counts_match_the_generated_rows(pg, nothing):
    # the shares are computed by Postgres; count the same thing in Python on the rows that were loaded
    counts = pd.Series([r[3] for r in nothing.log.rows]).value_counts()
    got = nothing.shares.set_index("kind")["events"]
    assert got.to_dict() == counts.to_dict()
    coh = nothing.cohorts
    assert (coh[coh["age"] == 0]["retention"] == 1).all()
    assert coh["users"][coh["age"] == 0].sum() == len(set(r[1] for r in nothing.log.rows))


def test_no_effect_reported_at_strength_zero(nothing, capsys):
    assert abs(nothing.gap()) < pivot.MIN_GAP
    pivot.check_no_effect(nothing)
    pivot.check_recovers_truth(nothing)
    assert "does NOT support" in pivot.verdict(nothing)
    assert capsys.readouterr().out.count("PASS  ") == 4


def test_effect_checkpoints_fail_on_the_wrong_data(planted, nothing):
    with pytest.raises(CheckpointFailed, match=r"retain at least 10% better at week 4: -?0\.\d+ < expected 0.1"):
        pivot.check_pivot_supported(nothing)
    with pytest.raises(CheckpointFailed, match=r"at strength 0 no retention gap .*: 0\.\d+ > expected at most"):
        pivot.check_no_effect(planted)
    # the SQL's answer on strength-0 data held against a strength-1 truth: far outside the tolerance
    wrong_truth = dataclasses.replace(nothing, log=burbn.generate(4000, 10, strength=1.0, seed=12345))
    with pytest.raises(
        CheckpointFailed,
        match=r"retention gap within 0.06 of the generator's truth: 0\.\d+ > "
        r"expected at most 0.06 at measured -?0\.\d+ vs truth 0\.\d+",
    ):
        pivot.check_recovers_truth(wrong_truth)


# ---------------------------------------------------------------------------------------- exercise


def test_exercise_reference_solution_passes(pg, nothing, capsys):
    pivot.check_retention_query(solution.cohort_retention_sql, pg.dsn)
    assert capsys.readouterr().out.startswith("PASS  exercise: your cohort-retention query matches")


def test_exercise_not_attempted_says_so(pg, nothing, capsys):
    def cohort_retention_sql():
        raise NotImplementedError

    pivot.check_retention_query(cohort_retention_sql, pg.dsn)
    assert "Not attempted yet" in capsys.readouterr().out


def test_exercise_names_the_first_wrong_cohort(pg, nothing):
    def over_all_users():  # divides by every user instead of the cohort's size
        return """SELECT cohort, age,
                         count(*)::float8 / (SELECT count(DISTINCT user_id) FROM events_weekly) AS retention
                  FROM (SELECT DISTINCT user_id, week - min(week) OVER (PARTITION BY user_id) AS age,
                               min(week) OVER (PARTITION BY user_id) AS cohort FROM events_weekly) a
                  GROUP BY cohort, age"""

    def counts_events():  # counts events, not distinct users
        return """WITH e AS (SELECT user_id, week, min(week) OVER (PARTITION BY user_id) AS cohort FROM events_weekly)
                  SELECT cohort, week - cohort AS age,
                         count(*)::float8 / first_value(count(*)) OVER (PARTITION BY cohort ORDER BY week - cohort)
                         AS retention FROM e GROUP BY cohort, week - cohort"""

    with pytest.raises(CheckpointFailed, match=r"cohort 0, week 0: your retention is 0\.\d+, the reference 1\.0000"):
        pivot.check_retention_query(over_all_users, pg.dsn)
    with pytest.raises(CheckpointFailed, match=r"cohort 0, week 1: your retention is \d\.\d+, the reference 0\.\d+"):
        pivot.check_retention_query(counts_events, pg.dsn)
    with pytest.raises(CheckpointFailed, match="Postgres rejected your query"):
        pivot.check_retention_query(lambda: "SELECT cohort FROM nowhere", pg.dsn)
    with pytest.raises(CheckpointFailed, match=r"no column\(s\) \['retention'\]"):
        pivot.check_retention_query(lambda: "SELECT 0 AS cohort, 0 AS age", pg.dsn)


# ------------------------------------------------------------------------------- panel knob ranges


def test_panel_knobs_at_their_minimum(pg):
    # the notebook's panel: seed=(1, 9999), users=(500, 100_000), weeks=(6, 52), strength=(0, 1)
    res = pivot.run_pivot(pg.dsn, seed=1, users=500, weeks=6, strength=0.0, insert_rows=100)
    assert res.log.events == res.loads["rows"].iloc[2] and res.cohorts["cohort"].nunique() == 6
    assert isinstance(res.gap(), float) and isinstance(pivot.verdict(res), str)


def test_panel_knobs_at_their_maximum(pg):
    # the largest log the panel can ask for is big; the knobs' maxima are exercised on the generator and
    # the SQL with the largest weeks/strength/seed, and the users maximum on the generator alone
    res = pivot.run_pivot(pg.dsn, seed=9999, users=1500, weeks=52, strength=1.0, insert_rows=100)
    assert res.cohorts["age"].max() >= 30 and res.supports_pivot()
    big = burbn.generate(100_000, 6, strength=0.0, seed=9999)
    assert big.users == 100_000 and big.events > 500_000
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        pivot.load_table(conn, big.rows[:50_000], table="events_big_probe")
        assert conn.execute("SELECT count(*) FROM events_big_probe").fetchone()[0] == 50_000
        conn.execute("DROP TABLE events_big_probe")
