"""The checkpoint helper: bounds, stable PASS line, failure messages that carry the measured value."""

from __future__ import annotations

import json

import pytest

from labkit import checkpoints
from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter, CheckpointFailed


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(checkpoints.LOG_ENV, raising=False)
    checkpoints.clear()
    yield
    checkpoints.clear()


def test_pass_prints_one_stable_line_without_numbers(capsys):
    rec = checkpoint("a 10% cache serves most reads", 0.7312, at_least=0.5, context="zipf s=1.1")
    assert capsys.readouterr().out == "PASS  a 10% cache serves most reads\n"
    assert rec.passed and rec.measured == pytest.approx(0.7312) and rec.bound == ">= 0.5"


def test_at_least_failure_names_measured_bound_and_context():
    with pytest.raises(CheckpointFailed) as err:
        checkpoint("hit ratio", 0.41, at_least=0.60, context="zipf s=0.99")
    assert str(err.value) == "hit ratio: 0.41 < expected 0.6 at zipf s=0.99"
    assert checkpoints.records()[-1].passed is False


def test_at_most_and_range():
    checkpoint("p99 under 25 ms", 3.2, at_most=25, quiet=True)
    with pytest.raises(CheckpointFailed, match="40 > expected at most 25"):
        checkpoint("p99 under 25 ms", 40.0, at_most=25)
    with pytest.raises(CheckpointFailed, match="0.1 < expected 0.2"):
        checkpoint("ratio in range", 0.1, at_least=0.2, at_most=0.9)


def test_within_relative_tolerance():
    checkpoint("db queries match the model", 105, within=(100, 0.1), quiet=True)
    with pytest.raises(CheckpointFailed, match=r"120 is not within 10% of expected 100 \(allowed 90..110\)"):
        checkpoint("db queries match the model", 120, within=(100, 0.1))


def test_nan_fails_and_bad_input_names_the_fix():
    with pytest.raises(CheckpointFailed, match="NaN"):
        checkpoint("something measured", float("nan"), at_least=0)
    with pytest.raises(BadParameter, match="no bound"):
        checkpoint("x", 1.0)
    with pytest.raises(BadParameter, match="within=.*not both"):
        checkpoint("x", 1.0, at_least=0, within=(1, 0.1))
    with pytest.raises(BadParameter, match="must be a number"):
        checkpoint("x", "fast", at_least=0)


def test_records_and_jsonl_log(tmp_path, monkeypatch):
    log = tmp_path / "checkpoints.jsonl"
    monkeypatch.setenv(checkpoints.LOG_ENV, str(log))
    monkeypatch.setenv("LABKIT_NOTEBOOK", "09-caching")
    checkpoint("one", 2.0, at_least=1, quiet=True)
    with pytest.raises(CheckpointFailed):
        checkpoint("two", 0.0, at_least=1)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["claim"], x["passed"], x["notebook"]) for x in lines] == [
        ("one", True, "09-caching"),
        ("two", False, "09-caching"),
    ]
    assert [r.claim for r in checkpoints.records()] == ["one", "two"]
    df = checkpoints.summary()
    assert list(df["passed"]) == [True, False]
