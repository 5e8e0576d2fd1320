"""Binder's budget, for real: the memory-budget hook of the root conftest (LABKIT_MEMORY_BUDGET_MB) puts a
notebook's kernel and everything it starts in a memory cgroup of that size, and a light Cassandra node fits
the per-node share a 3-node lab needs.

The hook is exercised on tiny notebooks run by a child pytest (the same plugin, its own LABKIT_HOME): one that
fits passes and reports its peak, one that allocates more than the budget is killed by the kernel's OOM
killer and fails the run. Skipped, saying why, only where memory cgroups are not writable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from labkit import cgroups

ROOT = Path(__file__).resolve().parent.parent


def _needs_memory_cgroups() -> None:
    ok, why = cgroups.available("memory")
    if not ok:
        pytest.skip(f"memory budget not testable here: {why}")


def _notebook(path: Path, mb: int) -> Path:
    """A notebook whose one code cell makes `mb` MB resident in the kernel (written, so the pages are real)."""
    cell = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {},
        "outputs": [],
        "source": [f"blob = b'x' * ({mb} << 20)\n", "print(len(blob) >> 20)"],
    }
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def _run_budgeted(nb: Path, budget_mb: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_TEST_HOME_SET", "LABKIT_HOME")}
    env["LABKIT_MEMORY_BUDGET_MB"] = str(budget_mb)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "conftest", "--nbval-lax"]
    # a kernel the OOM killer took answers nothing: its cell fails at nbval's cell timeout
    argv += ["--nbval-current-env", "--nbval-cell-timeout=10", "-p", "no:rerunfailures", str(nb)]
    return subprocess.run(argv, cwd=nb.parent, env=env, capture_output=True, text=True, timeout=300)


def _budget_row(out: str, name: str) -> list[int]:
    """peak PSS, cgroup peak, OOM kills, seconds from the run's memory-budget table."""
    for line in out.splitlines():
        fields = line.split()
        if fields[:1] == [name] and len(fields) == 5 and all(f.isdigit() for f in fields[1:]):
            return [int(f) for f in fields[1:]]
    raise AssertionError(f"no memory-budget row for {name} in:\n{out[-3000:]}")


def test_a_notebook_within_the_budget_passes_and_reports_its_peak(tmp_path):
    _needs_memory_cgroups()
    r = _run_budgeted(_notebook(tmp_path / "fits.ipynb", 120), budget_mb=512)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "memory budget: each notebook's kernel and servers in a 512 MB cgroup" in r.stdout
    pss, cgroup_peak, ooms, _seconds = _budget_row(r.stdout, "fits.ipynb")
    # the kernel's 120 MB blob was charged to the notebook's group (so the kernel was in it), under the limit
    assert 120 <= cgroup_peak <= 512 and 120 <= pss <= 512 and ooms == 0


def test_a_notebook_over_the_budget_is_killed_and_fails(tmp_path):
    _needs_memory_cgroups()
    r = _run_budgeted(_notebook(tmp_path / "too_big.ipynb", 400), budget_mb=200)
    assert r.returncode != 0, r.stdout[-3000:]
    _pss, cgroup_peak, ooms, _seconds = _budget_row(r.stdout, "too_big.ipynb")
    assert ooms >= 1 and cgroup_peak <= 200
    assert "the OOM killer struck inside the 200 MB memory budget in: too_big.ipynb" in r.stdout


def test_the_budget_applies_only_when_asked(tmp_path):
    """Without LABKIT_MEMORY_BUDGET_MB nothing is limited and no table is printed (a learner's own run)."""
    nb = _notebook(tmp_path / "free.ipynb", 8)
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_TEST_HOME_SET", "LABKIT_HOME")}
    env.pop("LABKIT_MEMORY_BUDGET_MB", None)
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "conftest", "--nbval-lax"]
    r = subprocess.run(
        [*argv, "--nbval-current-env", str(nb)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert "memory budget" not in r.stdout


@pytest.mark.cassandra
def test_an_idle_light_cassandra_node_stays_under_400_mb():
    """Issue 18's per-node target: 3 light nodes (and a kernel) fit in Binder's 2 GB only if each stays small."""
    from labkit.errors import BinaryNotFound
    from labkit.services.cassandra import LocalCassandra, find_java

    try:
        find_java()
    except BinaryNotFound as e:
        pytest.skip(f"Cassandra tests need Java 17: {e}")
    c = LocalCassandra("light-mem", nodes="dc1:1", profile="light")
    try:
        c.start()
        time.sleep(10)  # idle after the start's schema work and flushes
        proc = psutil.Process(int(c.nodes[0].ref["pid"]))
        rss_mb = proc.memory_info().rss / 2**20
        assert rss_mb <= 400, f"an idle light node holds {rss_mb:.0f} MB resident (target: <= 400 MB)"
    finally:
        c.stop()
        c.remove_data()
