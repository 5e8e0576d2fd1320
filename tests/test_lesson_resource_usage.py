"""Lesson 04 (resource usage) on real gunicorn, Postgres and memcached: the GC-mode memory claim at other
settings and failing on broken input, the instruction count, every widget's range, the exercise."""

from __future__ import annotations

import os
import shutil

import pytest

from labkit.errors import BadParameter, CheckpointFailed
from labkit.lessons import resource_usage as ru
from labkit.lessons._solutions import resource_usage as solution


@pytest.fixture(scope="module")
def prepared(stack, pg):
    ru.prepare(pg.dsn)
    return stack


@pytest.fixture(scope="module")
def modes(prepared):
    # not the notebook's defaults: one worker, a 32 MB heap, another seed
    return ru.compare_gc(prepared, modes=("default", "freeze"), heap_mb=32, requests=400, workers=1, steps=2, seed=7)


def test_smaps_rollup_reads_this_process():
    m = ru.smaps_rollup(os.getpid())
    assert m["rss"] > 10 and abs(m["private"] + m["shared"] - m["rss"]) < 1.0 and 0 < m["pss"] <= m["rss"]
    with pytest.raises(BadParameter, match="no process"):
        ru.smaps_rollup(2**22 + 12345)


def test_freeze_claim_holds_at_another_setting(modes, capsys):
    assert modes["default"].errors == 0 and modes["freeze"].errors == 0
    assert min(modes["default"].full_gcs.values()) >= 1
    ru.check_freeze_keeps_memory_shared(modes, factor=1.3)
    assert capsys.readouterr().out.count("PASS  ") == 2
    assert ru.memory_table(modes).loc["freeze", "private before (MB)"] < 10


def test_freeze_claim_fails_on_broken_input(prepared, modes):
    # "freeze" that is really the default GC: no saving
    with pytest.raises(CheckpointFailed, match=r"at least 1.3x lower than the default GC: 1(\.0\d*)? < expected 1.3"):
        ru.check_freeze_keeps_memory_shared({"default": modes["default"], "freeze": modes["default"]})
    # a "default" run in which no full collection ran (a worker with GC disabled never collects)
    nogc = ru.memory_run(prepared, "disable", heap_mb=8, requests=100, workers=1, steps=1)
    assert max(nogc.full_gcs.values()) == 0
    with pytest.raises(CheckpointFailed, match=r"a full collection ran in the default-GC workers: 0 < expected 1"):
        ru.check_freeze_keeps_memory_shared({"default": nogc, "freeze": modes["freeze"]})


def test_memory_widget_extremes(prepared):
    # each knob at its minimum and its maximum: heap_mb (8, 256), requests (100, 2000), workers (1, 4)
    small = ru.memory_run(prepared, "freeze", heap_mb=8, requests=2000, workers=1, steps=1)
    big = ru.memory_run(prepared, "default", heap_mb=256, requests=100, workers=4, steps=1)
    assert small.errors == 0 and big.errors == 0
    assert sum(small.served.values()) == 2000 and len(big.after()) == 4
    assert min(r["shared"] for r in big.after()) > 200  # right after the fork the 256 MB heap is shared
    with pytest.raises(BadParameter, match="gc_mode='off'"):
        ru.memory_run(prepared, "off")


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed (apt-get install valgrind)")
def test_instructions_per_request_counted_by_valgrind(prepared, pg, capsys):
    counts = ru.instructions_per_request(pg.dsn, requests=5)
    assert counts["method"] == "valgrind" and counts["naive"] > 1e5 and counts["cached"] > 1e3
    ru.check_optimization(counts, factor=5)
    assert capsys.readouterr().out.startswith("PASS  ")
    # the widget's maximum (cheap renderer only: 200 naive requests under valgrind take minutes on a laptop)
    assert ru.instructions_per_request(pg.dsn, requests=200, renderers=("cached",))["cached"] > 1e3
    with pytest.raises(CheckpointFailed, match=r"by at least 5x: 1 < expected 5"):
        ru.check_optimization(counts, after="naive")


def test_cpu_time_fallback_shows_the_same_saving(prepared, pg):
    counts = ru.instructions_per_request(pg.dsn, requests=50, method="cpu")
    assert counts["unit"] == "CPU µs" and ru.instructions_table(counts).shape[0] == 2
    ru.check_optimization(counts, factor=5)
    with pytest.raises(BadParameter, match="method='perf'"):
        ru.instructions_per_request(pg.dsn, method="perf")


def test_exercise_reference_solution_passes(prepared, capsys):
    assert ru.check_private_probe(solution.private_mb, prepared) is True
    assert "PASS  exercise" in capsys.readouterr().out


def test_exercise_wrong_solutions(prepared, capsys):
    def not_done(pid):
        raise NotImplementedError

    assert ru.check_private_probe(not_done, prepared) is None
    assert "Not attempted yet" in capsys.readouterr().out

    def rss_instead(pid):
        return ru.smaps_rollup(pid)["rss"]

    with pytest.raises(CheckpointFailed, match="Sum Private_Clean and Private_Dirty"):
        ru.check_private_probe(rss_instead, prepared)
