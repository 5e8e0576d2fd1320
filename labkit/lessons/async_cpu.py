"""Lesson 08, the counter-case: a CPU-bound handler, where an event loop has nothing to overlap.

Both servers (one gunicorn sync worker, one uvicorn event loop) get closed-loop load on ``/cpu`` in short
alternating slices. Besides requests per wall-clock second, the server processes' own CPU seconds are read
(psutil) so the comparison is per CPU second: what each would serve on a core of its own, however busy the
shared machine is. (Re-exported by ``labkit.lessons.async_io``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_cpu_bound", "cpu_compare", "view_cpu"]


def _cpu_seconds(svc: Any) -> float:
    """User + system CPU seconds used so far by the server's processes (master and workers)."""
    import psutil

    total = 0.0
    for pid in {p.pid for p in [svc.master()] if p is not None} | set(svc.worker_pids()):
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def cpu_compare(
    servers: Any, *, n: int = 300_000, clients: int = 8, duration: float = 1.0, repeats: int = 4
) -> dict[str, float]:
    """Closed-loop load on the CPU-bound route of both servers, alternating in short slices (so a change in
    the machine's other load hits both alike). Requests per wall-clock second of each, and requests per CPU
    second its processes used: what one server would serve on a core of its own, whoever else runs here."""
    from labkit.lessons.async_io import drain
    from labkit.load import Workload, run
    from labkit.load.http import http

    if n < 1 or clients < 1 or duration <= 0 or repeats < 1:
        raise BadParameter(f"n, clients, duration and repeats must be > 0 (got {n}, {clients}, {duration}, {repeats})")
    ops = {"sync": 0, "async": 0}
    secs = {"sync": 0.0, "async": 0.0}
    cpu = {"sync": 0.0, "async": 0.0}
    for i in range(repeats):
        for name in ("sync", "async") if i % 2 == 0 else ("async", "sync"):  # ABBA: a drift hits both alike
            svc = servers.by_name(name)
            web = http(svc.endpoint)
            c0 = _cpu_seconds(svc)
            res = run(
                web.get_op(lambda op: f"/cpu?n={n}", asynchronous=True),
                Workload(clients=clients, duration=duration),
                driver=web,
                name=name,
            )
            drain(svc)  # the requests cut off at the end still burn the server's CPU: count them in
            cpu[name] += _cpu_seconds(svc) - c0
            ops[name] += res.ops
            secs[name] += res.duration
    out: dict[str, float] = {name: ops[name] / secs[name] for name in ops}
    out |= {f"{name} per cpu s": ops[name] / max(cpu[name], 1e-9) for name in ops}
    return out | {"n": n, "clients": clients}


def view_cpu(cpu: dict[str, float]) -> pd.DataFrame:
    """The counter-case's table: requests per second of each server on the CPU-bound route."""
    import pandas as pd

    rows = [
        {
            "server": name,
            "work per request (loop iterations)": cpu["n"],
            "clients": cpu["clients"],
            "served (req/s, wall clock)": cpu[name],
            "served per CPU second of the server": cpu[f"{name} per cpu s"],
        }
        for name in ("sync", "async")
    ]
    return pd.DataFrame(rows).set_index("server").round(1)


def check_cpu_bound(cpu: dict[str, float], at_most: float = 1.2) -> None:
    """Claim: on a CPU-bound handler async is not faster than sync by more than ``at_most``x — compared per
    CPU second each server's processes used, i.e. as each would serve on a core of its own (the wall-clock
    rates follow whatever else the shared machine runs)."""
    checkpoint(
        f"on a CPU-bound handler async is not more than {at_most - 1:.0%} faster than sync",
        cpu["async per cpu s"] / max(cpu["sync per cpu s"], 1e-9),
        at_most=at_most,
        context=f"{cpu['async per cpu s']:.0f} vs {cpu['sync per cpu s']:.0f} requests per CPU second "
        f"({cpu['async']:.0f} vs {cpu['sync']:.0f} req/s wall clock), /cpu?n={cpu['n']}, {cpu['clients']} clients",
    )
