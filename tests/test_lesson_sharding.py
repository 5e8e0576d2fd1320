"""Lesson 03 (horizontal scaling) on four real Postgres servers: the ID, scaling, move and feed claims
at settings other than the notebook's, each checkpoint failing on a broken input, the panels' knobs at
both ends, and the exercise's self-check with the reference and with wrong decoders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from labkit import cgroups
from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import shard_feed as feed
from labkit.lessons import shard_move as move
from labkit.lessons import shard_scaling as scaling
from labkit.lessons import sharding
from labkit.lessons._solutions import sharding as solution

N = 32  # logical shards in these tests (the notebook uses 256 in CI, 1024 in full)


@pytest.fixture(scope="module")
def lab(stack):
    lab = sharding.Lab(stack, 4)
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def router(lab):
    return lab.router(N)


@pytest.fixture(scope="module")
def id_result(router, lab):
    return sharding.id_run(router, lab.pool, clients=12, ops=900, duration=None, seed=5)


def needs_cgroups():
    ok, why = cgroups.available("cpu")
    if not ok:
        pytest.skip(f"CPU caps unavailable here: {why}")


# ----------------------------------------------------------------------------------------------- IDs


def test_ids_claim_holds_with_other_clients_and_shards(id_result, capsys):
    assert len(id_result.id) == 900 and id_result.n_shards == N
    sharding.check_ids(id_result)
    assert capsys.readouterr().out.count("PASS  ") == 7


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda r: dataclasses.replace(r, id=np.concatenate([r.id[:-1], r.id[:1]])), "every ID is unique: 1 > "),
        (lambda r: dataclasses.replace(r, shard=(r.shard + 1) % N), "decodes to the shard it was written to"),
        (
            lambda r: dataclasses.replace(r, t_sent_ms=r.t_sent_ms + 2000, t_acked_ms=r.t_acked_ms + 2000),
            "within 1 s of its insert: 2\\d\\d\\d > expected at most 1000",
        ),
        (
            lambda r: dataclasses.replace(r, id=r.id[::-1].copy(), shard=r.shard[::-1].copy()),
            "a later insert always gets a larger ID",
        ),
        (lambda r: dataclasses.replace(r, clients=1), "many concurrent clients: 1 < expected 8"),
    ],
)
def test_id_checkpoint_fails_on_broken_ids(id_result, corrupt, message):
    with pytest.raises(CheckpointFailed, match=message):
        sharding.check_ids(corrupt(id_result))


def test_order_violations_ignore_overlapping_inserts():
    # shard 0: A [0, 10] id 5, B [5, 15] id 4 (overlaps A: fine), C [20, 30] id 3 (after both: wrong)
    r = sharding.IdRun(
        np.array([0, 0, 0]),
        np.array([5, 4, 3]),
        np.array([0.0, 5, 20]),
        np.array([10.0, 15, 30]),
        clients=3,
        n_shards=1,
    )
    assert sharding.order_violations(r) == 1
    r.id = np.array([5, 4, 6])
    assert sharding.order_violations(r) == 0


def test_router_rejects_bad_layouts(lab):
    with pytest.raises(BadParameter, match="13 bits of shard, so use 1..8192"):
        sharding.Router(lab.dsns, 8193)
    r = sharding.Router(lab.dsns, 8)
    with pytest.raises(BadParameter, match="servers=5: this router knows 4 servers"):
        r.spread(5)
    assert r.spread(2) == [0, 0, 0, 0, 1, 1, 1, 1] and r.shard_of(13) == 5


# ------------------------------------------------------------------------------------------- scaling


@pytest.fixture(scope="module")
def scaled(stack, router, lab):
    needs_cgroups()
    return scaling.scaling_sweep(
        stack, router, lab.pool, servers=4, clients=12, cpus_per_server=0.2, duration=2, read_ratio=0.5, seed=3
    )


def test_scaling_claim_holds_at_other_settings(scaled, capsys):
    scaling.check_scaling(scaled)
    assert capsys.readouterr().out.count("PASS  ") == 6
    assert [r["servers"] for r in scaled.rows] == [1, 2, 3, 4]
    assert scaled.rows[0]["throttled (s per server)"] > 0  # the cap, not the client, limited one server


def test_scaling_checkpoint_fails_when_servers_add_nothing(scaled):
    flat = dataclasses.replace(
        scaled, rows=[{**r, "throughput (ops/s)": scaled.rows[0]["throughput (ops/s)"]} for r in scaled.rows]
    )
    with pytest.raises(
        CheckpointFailed,
        match=r"2 capped servers give at least 1.6x the throughput of 1: 1 < "
        r"expected 1.6 at 32 shards, 0.2 core per server",
    ):
        scaling.check_scaling(flat)


@pytest.mark.parametrize(
    "knobs",
    [
        {"n_shards": 16, "servers": 1, "writers": 1, "readers": 0, "cpus_per_server": 0.1},  # every knob at its min
        {"n_shards": 1024, "servers": 1, "writers": 1, "readers": 0, "cpus_per_server": 0.5},  # the most shards
        {"n_shards": 16, "servers": 4, "writers": 32, "readers": 32, "cpus_per_server": 0.5},  # the other maxima
    ],
)
def test_scale_panel_runs_at_both_ends(stack, lab, knobs):
    needs_cgroups()
    clients = knobs["writers"] + knobs["readers"]
    # a fresh router: the sweep itself creates the schemas its maps need (only server 1's for servers=1)
    res = scaling.scaling_sweep(
        stack,
        sharding.Router(lab.dsns, knobs["n_shards"]),
        lab.pool,
        servers=knobs["servers"],
        clients=clients,
        read_ratio=knobs["readers"] / clients,
        cpus_per_server=knobs["cpus_per_server"],
        duration=1.5,
    )
    assert len(res.rows) == knobs["servers"] and all(r["throughput (ops/s)"] > 0 for r in res.rows)
    assert scaling.plot(res) is not None


# ---------------------------------------------------------------------------------------------- move


def _other(router, shard):
    return (router.map[shard] + 1) % 4


def test_move_claim_holds_with_other_writers(router, lab, capsys):
    m = move.move_under_writes(router, lab.pool, 3, _other(router, 3), writers=6, duration=1.5, seed=9)
    move.check_move(m)
    assert capsys.readouterr().out.count("PASS  ") == 5
    assert m.written == m.acknowledged == m.present and router.map[3] == m.target
    assert set(m.steps) == {"prepare", "bulk copy", "catch up", "freeze + switch"}


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"stale_router": True}, r"lost no acknowledged row: \d+ > expected at most 0 .*\(stale router\)"),
        ({"keep_ids": False}, r"duplicated no row: \d+ > expected at most 0 .*\(IDs not copied\)"),
        ({"freeze": False}, r"(lost no acknowledged row|no write went to the old location): \d+ > expected at most 0"),
    ],
)
def test_move_checkpoint_fails_on_broken_moves(router, lab, broken, message):
    shard = {"stale_router": 10, "keep_ids": 11, "freeze": 12}[next(iter(broken))]
    m = move.move_under_writes(router, lab.pool, shard, _other(router, shard), writers=12, duration=1.5, **broken)
    with pytest.raises(CheckpointFailed, match=message):
        move.check_move(m)


@pytest.mark.parametrize("writers", [1, 32])
def test_move_panel_runs_at_both_ends(router, lab, writers):
    shard = {1: 0, 32: N - 1}[writers]  # the shard slider's two ends too
    target = 0 if router.map[shard] == 3 else 3  # to_server's ends: 1 and 4
    m = move.move_under_writes(router, lab.pool, shard, target, writers=writers, duration=1.0)
    assert m.lost == 0 and m.duplicated == 0 and m.acknowledged > 0
    assert move.plot(m) is not None
    with pytest.raises(BadParameter, match="already lives on server"):
        move.move_under_writes(router, lab.pool, shard, target, writers=1, duration=0.2)


# ---------------------------------------------------------------------------------------------- feed


@pytest.fixture(scope="module")
def feeds(router):
    return feed.prepare_feeds(router, follows=12, seed=4)


def test_feed_claim_holds_with_other_follow_counts(feeds, lab, capsys):
    r = feed.feed_compare(feeds, lab.pool, clients=4, duration=1.0, check_users=30, seed=2)
    feed.check_feed(r)
    assert capsys.readouterr().out.count("PASS  ") == 4
    assert r.checked == 30 and r.servers_touched > 2


def test_feed_checkpoint_fails_when_a_server_is_skipped(feeds, lab):
    dropped = dataclasses.replace(feeds, sharded=[q[1:] for q in feeds.sharded])  # forget the first server
    r = feed.feed_compare(dropped, lab.pool, clients=2, duration=0.3, check_users=20)
    with pytest.raises(CheckpointFailed, match=r"same photos as the single-server feed: \d+ > expected at most 0"):
        feed.check_feed(r)


# ------------------------------------------------------------------------------------------ exercise


def test_exercise_reference_solution_passes(router, capsys):
    sharding.check_decoder(solution.decode_id, router)
    assert capsys.readouterr().out.startswith("PASS  exercise: decode_id reads time, shard and sequence of ")


@pytest.mark.parametrize(
    "decode_id, message",
    [
        (lambda i: ((i >> 23), (i >> 10) & 8191, i & 1023), "add the epoch"),
        (lambda i: ((i >> 22) + 1314220021721, (i >> 10) & 8191, i & 1023), "add the epoch|the time is id >> 23"),
        (lambda i: ((i >> 23) + 1314220021721, (i >> 11) & 8191, i & 1023), r"gave shard \d+, but it came from shard"),
        (lambda i: ((i >> 23) + 1314220021721, (i >> 10) & 8191, i % 1000), r"gave seq \d+, but Postgres used"),
        (lambda i: [i >> 23, 0, 0], "return a tuple"),
    ],
)
def test_exercise_fails_on_wrong_decoders(router, decode_id, message):
    with pytest.raises(CheckpointFailed, match=message):
        sharding.check_decoder(decode_id, router)


def test_exercise_not_attempted_says_so(router, capsys):
    def decode_id(id_):
        raise NotImplementedError

    sharding.check_decoder(decode_id, router)
    assert "Not attempted yet" in capsys.readouterr().out
