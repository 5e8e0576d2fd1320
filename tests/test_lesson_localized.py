"""Lesson 06 (per-continent clusters) on a real two-DC Cassandra: each claim at other settings than the notebook's,
each checkpoint failing on a broken input, the widgets at both ends, and the exercise's self-check."""

from __future__ import annotations

import pytest

from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import localized as geo06
from labkit.lessons._solutions import localized as solution
from tests._geo_cluster import shared_geo

pytestmark = pytest.mark.cassandra


@pytest.fixture
def geo(request):
    return shared_geo(request)  # the cluster is shared; each test starts at the 40 ms delay


def test_local_quorum_is_a_fraction_of_quorum_at_60ms(geo, capsys):
    t = geo06.measure_consistency(geo, delay_ms=60, clients=1, ops=16, users=50, seed=7, passes=1)
    assert set(t["consistency"]) == set(geo06.CLS) and (t["errors"] == 0).all()
    cross = t[t["consistency"] != "LOCAL_QUORUM"]
    assert (cross["p50_ms"] >= 2 * 60 * 0.95).all(), cross  # QUORUM and EACH_QUORUM cross the ocean
    geo06.check_local_quorum_latency(t)
    assert capsys.readouterr().out.count("PASS  ") == 2


def test_latency_checkpoint_fails_without_an_ocean(geo):
    """At 0 ms there is nothing for LOCAL_QUORUM to save: the claim must fail."""
    t = geo06.measure_consistency(
        geo, delay_ms=0, clients=1, ops=16, users=50, levels=("LOCAL_QUORUM", "QUORUM"), passes=1
    )
    with pytest.raises(
        CheckpointFailed,
        match=r"at most 25% of cross-DC QUORUM's in each region: \d\.\d+ > "
        r"expected at most 0\.25 at worst region's ratio at 0 ms",
    ):
        geo06.check_local_quorum_latency(t)


def test_per_continent_placement_saves_link_bytes_with_3kB_profiles(geo, capsys):
    t = geo06.compare_placement(geo, clients=2, ops=30, users=60, value_size=3000, seed=3)
    kb = t.set_index(["placement", "reads from"])["KB across link per 1000 ops"]
    # a global write ships the 3 kB profile across: about half the ops are writes
    assert kb[("global", "home")] >= 0.3 * 3000 * 1000 / 1024
    traveller = t[t["reads from"] == "other continent"].iloc[0]
    assert traveller["p50_ms"] >= 2 * 40 * 0.95  # the price of per-continent data for a traveller
    geo06.check_bytes_across_link(t)
    assert capsys.readouterr().out.count("PASS  ") == 1


def test_bytes_checkpoint_fails_when_per_continent_is_really_global(geo):
    fake = {"global": lambda uid: geo06.GLOBAL_KS, "per-continent": lambda uid: geo06.GLOBAL_KS}
    t = geo06.compare_placement(geo, clients=2, ops=30, users=60, value_size=1000, keyspaces=fake)
    with pytest.raises(CheckpointFailed, match=r"at least 5x fewer bytes .*: \d\.\d+ < expected 5 at global"):
        geo06.check_bytes_across_link(t)


def test_partition_local_quorum_serves_quorum_fails_and_europe_catches_up(geo, capsys):
    res = geo06.partition_run(geo, duration=1.5, clients=3, users=80, seed=5)
    assert res.written > 0 and res.visible_at_heal < res.written  # Europe really missed them
    geo06.check_partition(res)
    assert capsys.readouterr().out.count("PASS  ") == 4
    assert not geo.cluster.partitioned


def test_partition_checkpoint_fails_when_the_link_is_not_cut(geo):
    res = geo06.partition_run(
        geo, duration=1.0, clients=2, users=40, seed=6, cut=False, levels=("LOCAL_QUORUM", "QUORUM")
    )
    with pytest.raises(CheckpointFailed, match=r"QUORUM fails during the partition: 1 > expected at most 0\.01"):
        geo06.check_partition(res)


def test_widget_ends(geo):
    """The panel's ranges: delay 0..150 ms, clients 1..8, ops 20..400, value_size 100..8000, duration 1..10 s."""
    lo = geo06.measure_consistency(geo, delay_ms=0, clients=1, ops=20, users=20, levels=("LOCAL_QUORUM",))
    hi = geo06.measure_consistency(geo, delay_ms=150, clients=8, ops=20, users=20, levels=("QUORUM",), passes=1)
    assert lo["ops"].sum() == 2 * 20 and hi["p50_ms"].min() >= 2 * 150 * 0.95
    big = geo06.measure_consistency(geo, delay_ms=0, clients=8, ops=400, users=200, levels=("LOCAL_QUORUM",))
    assert big["ops"].sum() == 2 * 400 and (big["errors"] == 0).all()
    for size in (100, 8000):
        t = geo06.compare_placement(geo, clients=1, ops=10, users=20, value_size=size)
        assert len(t) == 3
    for duration in (1.0, 10.0):
        res = geo06.partition_run(geo, duration=duration, clients=1, users=20, levels=("LOCAL_QUORUM",))
        assert res.success("LOCAL_QUORUM") == 1.0 and res.converged == res.written
    with pytest.raises(BadParameter, match="0-1000 ms"):
        geo06.measure_consistency(geo, delay_ms=-1)


def test_exercise_reference_solution_passes(geo, capsys):
    geo06.check_save_profile(solution.save_profile, geo, users=20)
    assert capsys.readouterr().out.startswith("PASS  exercise")


def test_exercise_not_attempted(geo, capsys):
    def save_profile(sessions, user_id, home, profile):
        raise NotImplementedError

    geo06.check_save_profile(save_profile, geo, users=4)
    assert "Not attempted yet" in capsys.readouterr().out


def test_exercise_rejects_a_global_write(geo):
    from cassandra.query import SimpleStatement

    def save_everywhere(sessions, user_id, home, profile):
        sessions[home].execute(
            SimpleStatement("INSERT INTO geo_global.users (id, home, profile) VALUES (%s, %s, %s)"),
            (user_id, home, profile),
        )

    with pytest.raises(CheckpointFailed, match=r"is not in geo_(us|eu)\.users after save_profile"):
        geo06.check_save_profile(save_everywhere, geo, users=4)


def test_exercise_rejects_writing_home_data_through_the_other_continent(geo):
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    def save_via_us(sessions, user_id, home, profile):
        st = SimpleStatement(
            f"INSERT INTO geo_{home}.users (id, home, profile) VALUES (%s, %s, %s)",
            consistency_level=ConsistencyLevel.QUORUM,
        )
        sessions["us" if home == "eu" else "eu"].execute(st, (user_id, home, profile))

    with pytest.raises(CheckpointFailed, match=r"KB across the link per 1000 saves\): \d+ > expected at most 100"):
        geo06.check_save_profile(save_via_us, geo, users=20)
