"""Lesson 05 (consistency) on a real 3-node Cassandra cluster: every claim at settings other than the
notebook's, every checkpoint failing on a broken input, the exercise's self-check with the reference and a
wrong rule, and the panels' knobs at both ends. One cluster for the module (starting JVMs costs CPU)."""

from __future__ import annotations

import dataclasses

import pytest

from labkit.errors import BadParameter, BinaryNotFound, CheckpointFailed
from labkit.history import check
from labkit.lessons import consistency as cons
from labkit.lessons._solutions import consistency as solution

pytestmark = pytest.mark.cassandra
ONE_ONE, QQ = ("ONE", "ONE"), ("QUORUM", "QUORUM")


@pytest.fixture(scope="module")
def lab():
    import labkit
    from labkit.services.cassandra import find_java

    try:
        find_java()
    except BinaryNotFound as e:
        pytest.skip(f"lesson 05 needs Java 17: {e}")
    st = labkit.stack("cassandra", cassandra={"nodes": "dc1:3"}, attach=False)
    lab = cons.Lab(st.service("cassandra"), st)
    yield lab
    lab.close()
    st.close()


@pytest.fixture(scope="module")
def lag(lab):
    # not the notebook's settings: 3 clients per pair, 8 keys, 15 operations per client per phase, another seed
    return cons.lagging_replica(lab, clients_per_pair=3, keys_per_pair=8, ops_per_client=15, seed=5)


@pytest.fixture(scope="module")
def down(lab):
    # clients_per_pair at the panel's maximum, ops_per_client at its minimum
    return cons.node_down(lab, clients_per_pair=8, ops_per_client=5, durable_clients=3, durable_keys=30, seed=2)


def test_one_one_reads_stale_and_every_r_plus_w_over_n_pair_reads_fresh(lag, capsys):
    cons.check_one_reads_stale(lag)
    assert capsys.readouterr().out == "PASS  ONE writes + ONE reads with a lagging replica: stale reads observed\n"
    for (w, r), rep in lag.reports.items():
        assert not rep.phantom_reads, rep
        if cons.replicas(w) + cons.replicas(r) > 3:
            assert rep.stale_reads == [], (w, r, str(rep))
            assert lag.reads_via_lagging((w, r)) >= 10, (w, r)
    violation = lag.reports[ONE_ONE].stale_reads[0]
    assert violation.op.tags["via"] == "via:" + lag.lagging and violation.witnesses[0].outcome == "ok"


def test_quorum_never_stale_with_a_lagging_replica(lag, capsys):
    cons.check_quorum_never_stale(lag)
    assert capsys.readouterr().out.count("PASS  ") == 2


def test_stale_checkpoints_fail_on_broken_inputs(lab, lag):
    # the control: same phases, C never paused (ONE/ONE with max clients per pair) -> no stale read to find
    control = cons.lagging_replica(lab, [ONE_ONE, QQ], clients_per_pair=8, ops_per_client=5, lag=False)
    assert control.paused_s == 0 and control.reports[ONE_ONE].reads_ok > 0
    with pytest.raises(CheckpointFailed, match=r"stale reads observed: 0 < expected 1 at \d+ reads"):
        cons.check_one_reads_stale(control)
    # the QUORUM claim handed the ONE/ONE history: it must see the stale reads and name the proof
    broken = dataclasses.replace(lag)
    broken.reports = {**lag.reports, QQ: lag.reports[ONE_ONE]}
    with pytest.raises(
        CheckpointFailed,
        match=r"0 stale reads with a lagging replica: \d+ > expected at most 0 .*"
        r"first: stale read: read of",
    ):
        cons.check_quorum_never_stale(broken)


def test_one_node_down_quorum_works_all_is_unavailable(down, capsys):
    cons.check_node_down(down)
    out = capsys.readouterr().out
    assert out.count("PASS  ") == 4 and "ALL fails with Unavailable" in out
    assert down.errors("ALL").get("Unavailable", 0) >= 1
    for w, r in down.pairs:
        if "ALL" not in (w, r):
            assert down.availability((w, r), "write") >= 0.95 and down.availability((w, r), "read") >= 0.95


def test_node_down_checkpoint_fails_with_every_node_up(lag):
    # the reads-through-C phase of the lagging run, when every node was up: ALL succeeds there
    all_up = cons.NodeDownRun(
        lag.history.filter(lambda o: o.tags.get("phase") == "read-through-C"), lag.pairs, node="none"
    )
    with pytest.raises(CheckpointFailed, match=r"no operation at ALL succeeds: \d+ > expected at most 0"):
        cons.check_node_down(all_up)


def test_kill_and_restart_under_quorum_writes_loses_nothing(lab, down, capsys):
    cons.check_no_lost_writes(down)
    assert capsys.readouterr().out.count("PASS  ") == 3
    assert all(n.alive() for n in lab.nodes) and down.restart_s > 0
    finals = [o for o in down.durable.ops if o.tags.get("phase") == "final" and o.outcome == "ok"]
    assert len(finals) == len({o.key for o in down.durable.ops if o.tags.get("phase") == "durable"})


def test_lost_write_checkpoint_fails_when_rows_vanish(lab, down):
    # a real broken input: delete five of the durable rows behind the clients' backs, read again at ALL
    keys = sorted({o.key for o in down.durable.ops if o.kind == "write" and o.outcome == "ok"})[:5]
    for k in keys:
        lab.session.execute(f"DELETE FROM {cons.KEYSPACE}.kv WHERE k = %s", (k,))
    h = down.durable.filter(lambda o: True)
    cons.final_reads(lab, h, keys)
    broken = dataclasses.replace(down, durable=h, durable_report=check(h))
    assert {v.op.key for v in broken.durable_report.lost_writes} == set(keys)
    with pytest.raises(
        CheckpointFailed,
        match=r"0 acknowledged writes lost: \d+ > expected at most 0 .*lost write: "
        r"acknowledged write of \d+ to",
    ):
        cons.check_no_lost_writes(broken)


def test_lwt_slower_than_plain_quorum_write_and_fails_on_plain(lab, capsys):
    lwt = cons.lwt_latency(lab, clients=1, ops=60, seed=4)  # the panel's minimum clients
    cons.check_lwt_slower(lwt)
    assert capsys.readouterr().out.count("PASS  ") == 1
    assert lwt.not_applied == 0  # each client compares-and-sets its own key
    assert set(lwt.table().index) == {"plain write", "insert if not exists", "update if v ="}
    control = cons.lwt_latency(lab, clients=1, ops=60, seed=4, lwt_kind="plain")
    with pytest.raises(CheckpointFailed, match=r"LWT p50 latency at least 1.5x a plain QUORUM write's: \d"):
        cons.check_lwt_slower(control)


def test_lwt_panel_ends(lab):
    for ops in (50, 600):  # maximum clients; minimum and maximum operations
        res = cons.lwt_latency(lab, clients=16, ops=ops)
        assert res.result.ops + res.result.error_count >= ops and res.ratio > 0 and res.not_applied == 0


@pytest.mark.parametrize("ops_per_client", [5, 100])  # the panel's ends (one pair, one client: a smoke run)
def test_lagging_panel_ends_smoke(lab, ops_per_client):
    run = cons.lagging_replica(lab, [ONE_ONE], clients_per_pair=1, ops_per_client=ops_per_client)
    assert run.reports[ONE_ONE].reads_ok > 0 and run.reads_via_lagging(ONE_ONE) > 0
    assert len(run.history) >= 2 * ops_per_client


def test_table_and_plot(lag, down):
    df = cons.rwn_table(lag, down)
    assert len(df) == 9 and list(df.loc[("ONE", "ONE")][["R + W", "R + W > N"]]) == [2, "no"]
    assert df.loc[("ALL", "ONE"), "writes ok, C down (%)"] == 0
    fig = cons.plot_rwn(lag, down)
    assert [ax.get_xlabel() for ax in fig.axes[:2]] == ["read consistency level R"] * 2


def test_bad_parameters_name_the_fix(lab):
    with pytest.raises(BadParameter, match="consistency levels in this lesson are ONE, QUORUM, ALL"):
        cons.lagging_replica(lab, [("TWO", "ONE")])
    with pytest.raises(BadParameter, match="nodes='dc1:3'"):
        cons.Lab(type("OneNode", (), {"nodes": [object()]})())


# ---------------------------------------------------------------------------------------------- exercise


def test_exercise_reference_passes(lab, capsys):
    n = cons.check_stale_rule(solution.is_stale, lab)
    assert capsys.readouterr().out.startswith("PASS  exercise: your stale-read rule agrees") and n > 20


def test_exercise_fails_on_a_rule_that_never_says_stale(lab):
    with pytest.raises(CheckpointFailed, match=r"your is_stale says False for\n.* read .*\nbut the checker says True"):
        cons.check_stale_rule(lambda read, writes: False, lab, seed=11)


def test_exercise_not_attempted_says_so(lab, capsys):
    def is_stale(read, writes):
        raise NotImplementedError

    assert cons.check_stale_rule(is_stale, lab) is None
    assert "Not attempted yet" in capsys.readouterr().out
