"""The history checker on hand-made histories: each rule found where it is broken, and nowhere else.

Pure Python on purpose: the checker is a function of a list of operations, not a stand-in for a server.
The lesson tests run it on real Cassandra histories."""

from __future__ import annotations

import pytest

from labkit.errors import BadParameter
from labkit.history import History, Operation, check, precedes


def W(value, invoke, complete, key="k", outcome="ok", client=0):
    return Operation(0, client, "write", key, value, invoke, None if outcome == "timeout" else complete, outcome)


def R(value, invoke, complete, key="k", outcome="ok", client=1):
    return Operation(0, client, "read", key, value, invoke, complete, outcome)


def hist(*ops: Operation) -> History:
    h = History()
    h.t0 = 0.0
    h.extend(ops)
    return h


def test_reading_the_latest_acknowledged_write_is_fine():
    rep = check(hist(W(1, 0, 1), W(2, 2, 3), R(2, 4, 5), R(2, 6, 7)))
    assert rep.valid and rep.reads_ok == 2 and rep.writes_ok == 2


def test_a_read_older_than_an_acknowledged_write_is_stale_and_names_both_writes():
    h = hist(W(1, 0, 1), W(2, 2, 3), R(1, 4, 5), R(2, 6, 7))
    rep = check(h)
    assert len(rep.stale_reads) == 1 and not rep.lost_writes
    v = rep.stale_reads[0]
    assert v.op.value == 1 and v.op.invoke == 4
    assert [w.value for w in v.witnesses] == [2, 1]
    text = str(rep)
    assert "stale read: read of 'k' returned 1 although write of 2 was acknowledged 1000 ms before" in text
    assert "#2 client 1 read k -> 1  ok  [4.000 s .. 5.000 s]" in text


def test_no_value_after_an_acknowledged_write_is_stale():
    rep = check(hist(W(1, 0, 1), R(None, 2, 3), R(1, 4, 5)))
    assert len(rep.stale_reads) == 1 and "returned no value" in rep.stale_reads[0].why


def test_a_read_concurrent_with_a_write_may_return_either_value():
    # the write of 2 overlaps both reads: old or new is linearizable
    rep = check(hist(W(1, 0, 1), W(2, 2, 6), R(1, 3, 4), R(2, 3, 4), R(2, 7, 8)))
    assert rep.valid


def test_concurrent_writes_may_land_in_either_order():
    # 1 and 2 overlap: Cassandra's last-write-wins may keep either, so reading 1 after both acked is fine
    rep = check(hist(W(1, 0, 3), W(2, 1, 2), R(1, 4, 5), R(1, 6, 7)))
    assert rep.valid


def test_a_timed_out_write_is_indeterminate_never_a_violation():
    # the timed-out write of 2 may or may not have happened: reading 1 or 2 later is fine, and it is not lost
    rep = check(hist(W(1, 0, 1), W(2, 2, None, outcome="timeout"), R(1, 5, 6), R(2, 7, 8), R(1, 9, 10)))
    assert rep.valid and rep.indeterminate == 1


def test_a_timed_out_read_is_ignored():
    rep = check(hist(W(1, 0, 1), W(2, 2, 3), R(None, 4, None, outcome="timeout")))
    assert rep.valid and rep.reads_ok == 0 and rep.indeterminate == 1


def test_a_failed_write_that_was_read_is_a_phantom_and_one_never_written_too():
    rep = check(hist(W(1, 0, 1), W(2, 2, 3, outcome="fail"), R(2, 4, 5), R(9, 6, 7)))
    assert [v.rule for v in rep.phantom_reads] == ["phantom read", "phantom read"]
    assert "write that failed" in rep.phantom_reads[0].why and "no write of 9" in rep.phantom_reads[1].why
    assert not rep.valid and rep.failed == 1


def test_an_acknowledged_write_missing_from_the_final_read_is_lost():
    rep = check(hist(W(1, 0, 1), W(2, 2, 3), R(2, 4, 5), R(1, 9, 10)))
    assert [v.op.value for v in rep.lost_writes] == [2]
    assert "acknowledged write of 2 to 'k' is gone: the last read, begun 6000 ms after" in rep.lost_writes[0].why
    assert len(rep.stale_reads) == 1  # the final read is also stale


def test_final_read_of_nothing_loses_every_acknowledged_write():
    rep = check(hist(W(1, 0, 1), W(2, 2, 3), W(3, 4, None, outcome="timeout"), R(None, 9, 10)))
    assert sorted(v.op.value for v in rep.lost_writes) == [1, 2]


def test_a_write_acknowledged_after_the_last_read_began_is_not_judged():
    rep = check(hist(W(1, 0, 1), R(1, 2, 3), W(2, 2.5, 4)))
    assert rep.valid


def test_keys_are_independent():
    rep = check(
        hist(W(1, 0, 1, key="a"), W(1, 0, 1, key="b"), W(2, 2, 3, key="b"), R(1, 4, 5, key="a"), R(2, 4, 5, key="b"))
    )
    assert rep.valid


def test_stale_per_1000_reads_and_row():
    ops = [W(1, 0, 1), W(2, 2, 3)] + [R(2, 4 + i, 4.5 + i) for i in range(9)] + [R(1, 20, 21), R(2, 22, 23)]
    rep = check(hist(*ops))
    assert rep.stale_per_1000_reads == pytest.approx(1000 / 11)
    assert rep.row()["stale reads"] == 1 and rep.row()["lost writes"] == 0


def test_duplicate_values_and_valueless_writes_are_refused():
    with pytest.raises(BadParameter, match="values must be unique per key"):
        check(hist(W(1, 0, 1), W(1, 2, 3)))
    with pytest.raises(BadParameter, match="every write must write a value"):
        check(hist(W(None, 0, 1)))


def test_recorder_classifies_outcomes_and_reraises():
    class Unavailable(Exception):
        pass

    class WriteTimeout(Exception):
        pass

    h = History()
    with h.record(0, "write", "k", 1):
        pass
    with h.record(1, "read", "k") as op:
        op.value = 1
    for exc in (Unavailable("2 of 3 needed"), WriteTimeout("no answer")):
        with pytest.raises(type(exc)), h.record(0, "write", "k", len(h) + 10):
            raise exc
    outcomes = [(o.kind, o.outcome, o.error) for o in h]
    assert outcomes == [
        ("write", "ok", ""),
        ("read", "ok", ""),
        ("write", "fail", "Unavailable"),
        ("write", "timeout", "WriteTimeout"),
    ]
    assert h.ops[1].value == 1 and h.ops[3].complete is None
    assert h.errors() == {"Unavailable": 1, "WriteTimeout": 1}
    assert h.counts()["write fail"] == 1 and h.counts()["write timeout"] == 1
    assert check(h).valid
    df = h.to_frame()
    assert list(df["outcome"]) == ["ok", "ok", "fail", "timeout"]
    with pytest.raises(BadParameter, match="'read' or 'write'"):
        h.invoke(0, "cas", "k")


def test_precedes_uses_real_time_only():
    assert precedes(None, W(1, 0, 1))
    assert precedes(W(1, 0, 1), W(2, 2, 3))
    assert not precedes(W(1, 0, 2.5), W(2, 2, 3))  # overlap
    assert not precedes(W(1, 0, None, outcome="timeout"), W(2, 5, 6))


def test_checker_is_fast_enough_for_big_histories():
    ops = []
    for i in range(20_000):
        ops.append(W(i, 2 * i, 2 * i + 1, key=f"k{i % 100}"))
        ops.append(R(i, 2 * i + 1.5, 2 * i + 1.7, key=f"k{i % 100}"))
    rep = check(hist(*ops))
    assert rep.valid and rep.reads_ok == 20_000
