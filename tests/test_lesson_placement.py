"""Lesson 07 (Akkio-style placement and migration) on a real two-DC Cassandra: the claims at another seed and
size, each checkpoint failing on a broken input (no second copy, fresh ids, a policy without hysteresis), the
widgets at both ends, and the exercise's self-check with the reference and wrong policies."""

from __future__ import annotations

import threading
import uuid

import pytest

from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import placement as p07
from labkit.lessons._solutions import placement as solution
from tests._geo_cluster import shared_geo

pytestmark = pytest.mark.cassandra


@pytest.fixture
def geo(request):
    return shared_geo(request)


@pytest.fixture(scope="module")
def result(request):
    """The experiment at other settings than the notebook's: 12 units, seed 4, 3 clients."""
    geo = shared_geo(request)
    return p07.run_placement(geo, units=12, rounds=3, ops_per_round=220, clients=3, seed=4)


def test_moves_halve_remote_reads_and_lose_nothing(result, capsys):
    t = result.rounds
    assert result.moves >= 3 and t["units moved"].iloc[1] == result.moves  # all moves after round 1
    assert t["remote share"].iloc[0] > 0.45
    p07.check_remote_share(result)
    p07.check_no_lost_writes(result)
    p07.check_flapping(result.history, result.moves)
    assert capsys.readouterr().out.count("PASS  ") == 6
    assert result.writes["acknowledged"] >= 20


def test_the_link_carries_less_after_the_moves(result):
    kb = result.rounds["KB across link per 1000 ops"]
    assert kb.iloc[-1] < kb.iloc[0]


def _hammer(geo, unit: int, stop: threading.Event, acked: list) -> None:
    while not stop.is_set():
        wid = f"h-{uuid.uuid4()}"
        p07.write_row(geo, "us", unit, uuid.uuid4(), wid)
        acked.append((unit, wid))


def _move_under_writes(geo, **broken) -> dict:
    p07.prepare(geo, units=2, rows=20)
    acked: list = []
    stop = threading.Event()
    writers = [threading.Thread(target=_hammer, args=(geo, 0, stop, acked)) for _ in range(3)]
    for w in writers:
        w.start()
    try:
        import time

        time.sleep(0.5)
        p07.migrate(geo, 0, "us", "eu", **broken)
        time.sleep(0.5)
    finally:
        stop.set()
        for w in writers:
            w.join()
    return p07.verify_units(geo, acked)


def test_migration_under_concurrent_writes_loses_nothing(geo):
    w = _move_under_writes(geo)
    assert w["acknowledged"] >= 10 and w["lost"] == 0 and w["duplicated"] == 0, w


def test_lost_writes_checkpoint_fails_without_the_second_copy(geo):
    w = _move_under_writes(geo, second_pass=False)
    assert w["lost"] > 0, w
    res = p07.PlacementResult(rounds=None, log=[], history={}, writes={**w, "during moves": w["acknowledged"]})
    with pytest.raises(CheckpointFailed, match=r"0 acknowledged writes lost during the moves: \d+ > expected at most"):
        p07.check_no_lost_writes(res)


def test_duplicates_checkpoint_fails_when_the_copy_makes_new_ids(geo):
    w = _move_under_writes(geo, fresh_ids=True)
    assert w["duplicated"] > 0, w
    res = p07.PlacementResult(
        rounds=None, log=[], history={}, writes={**w, "lost": 0, "during moves": w["acknowledged"]}
    )
    with pytest.raises(CheckpointFailed, match=r"0 writes duplicated during the moves: \d+ > expected at most 0"):
        p07.check_no_lost_writes(res)


def test_flapping_checkpoint_fails_for_a_policy_without_hysteresis(result):
    history, _, _ = p07.replay(p07.most_accesses, result.log, windows=8)
    assert p07.flaps(history) > 0
    with pytest.raises(CheckpointFailed, match=r"0 flapping .*: \d+ > expected at most 0"):
        p07.check_flapping(history)


def test_remote_share_checkpoint_fails_when_nothing_moves(geo):
    frozen = p07.run_placement(geo, lambda counts, current: current, units=8, rounds=2, ops_per_round=60, clients=2)
    assert frozen.moves == 0
    with pytest.raises(CheckpointFailed, match=r"falls by at least 50% after migration: -?\d\.\d+ < expected 0\.5"):
        p07.check_remote_share(frozen)


def test_widget_ends(geo):
    """threshold 0.5..0.95, rounds 2..6, ops_per_round 100..1000, clients 1..16 (one run per end, small)."""
    lo = p07.run_placement(geo, p07.Hysteresis(threshold=0.5), units=4, rounds=2, ops_per_round=100, clients=1)
    hi = p07.run_placement(geo, p07.Hysteresis(threshold=0.95), units=4, rounds=6, ops_per_round=100, clients=16)
    big = p07.run_placement(geo, units=8, rounds=2, ops_per_round=1000, clients=16)
    for r in (lo, hi, big):
        assert r.writes["lost"] == 0 and r.writes["duplicated"] == 0
    assert len(hi.rounds) == 6 and big.rounds["reads"].sum() > 1500
    with pytest.raises(BadParameter, match="2-20 rounds"):
        p07.run_placement(geo, rounds=1)


def test_exercise_reference_policy_passes(result, capsys):
    p07.check_policy(solution.choose_home, result)
    assert capsys.readouterr().out.count("PASS  exercise") == 2


def test_exercise_not_attempted(result, capsys):
    def choose_home(counts, current):
        raise NotImplementedError

    p07.check_policy(choose_home, result)
    assert "Not attempted yet" in capsys.readouterr().out


def test_exercise_rejects_a_policy_without_hysteresis(result):
    with pytest.raises(CheckpointFailed, match=r"read evenly from both regions: stay \(hysteresis\)"):
        p07.check_policy(p07.most_accesses, result)


def test_exercise_rejects_a_policy_that_never_moves(result):
    with pytest.raises(CheckpointFailed, match=r"95% of the reads come from eu: move there"):
        p07.check_policy(lambda counts, current: current, result)
