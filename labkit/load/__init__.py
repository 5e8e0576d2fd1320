"""Load generation and measurement: workloads, the runner, drivers, metrics, server stats.

from labkit.load import Workload, Zipf, run
result = run(op, Workload(keys=Zipf(10_000, 0.99), clients=8, duration=5), driver=driver)
result.summary(); result.to_frame(); result.percentiles()
"""

from labkit.load import drivers, server_stats
from labkit.load.metrics import RunResult
from labkit.load.runner import Context, OperationBug, Progress, arun, run, run_coroutine, sweep
from labkit.load.workload import HotSpot, KeyDistribution, Op, OpMix, Trace, Uniform, Workload, Zipf

__all__ = [
    "Workload",
    "Uniform",
    "Zipf",
    "HotSpot",
    "Trace",
    "OpMix",
    "Op",
    "KeyDistribution",
    "run",
    "arun",
    "run_coroutine",
    "sweep",
    "RunResult",
    "Context",
    "Progress",
    "OperationBug",
    "drivers",
    "server_stats",
]
