"""labkit.cgroups: real CPU caps and memory limits, enforced by the kernel (skipped where cgroups are read-only)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from labkit import cgroups
from labkit.errors import BadParameter


def _need(controller: str) -> None:
    ok, why = cgroups.available(controller)
    if not ok:
        pytest.skip(f"cgroup {controller} limits unavailable here: {why}")


def test_cpu_limit_caps_a_busy_process():
    _need("cpu")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with cgroups.CpuLimit("test-cpu", cpus=0.2) as cap:
            assert cap.add_tree(busy.pid) == [busy.pid]
            assert busy.pid in cap.pids()
            before = psutil.Process(busy.pid).cpu_times()
            t0 = time.monotonic()
            time.sleep(1.5)
            after = psutil.Process(busy.pid).cpu_times()
            used = (after.user + after.system - before.user - before.system) / (time.monotonic() - t0)
            assert used < 0.35, f"a process capped at 0.2 cores used {used:.2f} cores"
            quota, period = (
                ((cap.path / "cpu.cfs_quota_us").read_text(), (cap.path / "cpu.cfs_period_us").read_text())
                if (cap.path / "cpu.cfs_quota_us").exists()
                else (cap.path / "cpu.max").read_text().split()
            )
            assert (int(quota), int(period)) == (4_000, 20_000)  # 0.2 of each 20 ms period
            if used >= 0.15:  # it reached its quota (on a busy machine it may get less CPU than the cap anyway)
                assert cap.throttled_seconds() > 0
        assert not cap.path.exists()
        assert psutil.Process(busy.pid).is_running()  # moved back, not killed
    finally:
        busy.kill()
        busy.wait()


def test_tiny_cpu_caps_lengthen_the_period_to_keep_the_kernels_minimum_quota():
    _need("cpu")
    for cpus, want in (
        (0.01, (1000, 100_000)),
        (0.02, (1000, 50_000)),
        (0.05, (1000, 20_000)),
        (1.5, (30_000, 20_000)),
    ):
        with cgroups.CpuLimit("test-cpu-tiny", cpus=cpus) as cap:
            assert (cap.quota_us, cap.period_us) == want
            assert cap.quota_us / cap.period_us == pytest.approx(cpus)


def test_memory_limit_stops_a_process_that_overruns_it():
    _need("memory")
    with cgroups.MemoryLimit("test-mem", mb=48) as box:
        hog = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(0.3); x = bytearray(256 * 2**20); time.sleep(0.5)"]
        )
        box.add(hog.pid)
        code = hog.wait(timeout=30)
        assert code != 0, "a process that allocated 256 MB inside a 48 MB limit was not stopped"
        assert box.oom_kills() >= 1
        assert 0 < box.peak_mb() <= 48.5


@pytest.mark.parametrize("cpus", [0, -1, "1", True, 5000])
def test_bad_cpu_values_say_what_to_give(cpus):
    with pytest.raises(BadParameter, match="cores"):
        cgroups.CpuLimit("x", cpus=cpus)


def test_bad_names_and_memory_sizes_are_refused():
    with pytest.raises(BadParameter, match="name"):
        cgroups.CpuLimit("../escape", cpus=1)
    with pytest.raises(BadParameter, match="MB"):
        cgroups.MemoryLimit("x", mb=1)
