"""Lesson 04 — use resources well: pre-fork memory sharing and CPU instructions per request.

Instagram's web tier ran Django in pre-fork servers: the master imports the code and the shared data, then
forks workers that share those pages copy-on-write. Two measurements on real servers:

- :func:`compare_gc`: a real gunicorn (``--preload``, sync workers) per GC mode (default, ``gc.disable()``,
  ``gc.freeze()``); each worker's RSS, PSS, private (USS) and shared memory from ``/proc/<pid>/smaps_rollup``
  before and after N requests driven by ``labkit.load``.
- :func:`instructions_per_request`: the CPU instructions one /feed request costs through the WSGI app, counted
  exactly by valgrind's cachegrind, before and after an optimization (a cached card serializer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from labkit import paths
from labkit.checkpoints import checkpoint
from labkit.errors import BadParameter, CheckpointFailed
from labkit.webapp.core import GC_MODES, RENDERERS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "GC_MODES",
    "MemoryRun",
    "check_freeze_keeps_memory_shared",
    "check_optimization",
    "check_private_probe",
    "compare_gc",
    "defaults",
    "instructions_per_request",
    "instructions_table",
    "memory_run",
    "memory_table",
    "plot_memory",
    "prepare",
    "smaps_rollup",
    "web_env",
]

MB = 1024.0  # smaps_rollup counts kB


def smaps_rollup(pid: int) -> dict[str, float]:
    """Memory of one process in MB: rss, pss, private (USS: pages only this process maps), shared.

    Read from ``/proc/<pid>/smaps_rollup`` (Linux 4.14+), the kernel's sum over every mapping.
    """
    fields: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) / MB
    except FileNotFoundError:
        raise BadParameter(f"no process {pid} (or no /proc/{pid}/smaps_rollup: Linux 4.14+ only)") from None
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    shared = fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)
    return {"rss": fields.get("Rss", 0.0), "pss": fields.get("Pss", 0.0), "private": private, "shared": shared}


def prepare(dsn: str) -> None:
    """Posts/users/likes of the course dataset in Postgres, plus the index the feed query uses."""
    import psycopg

    from labkit.lessons import caching

    caching.prepare(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX IF NOT EXISTS posts_user_id ON posts (user_id, id DESC)")


def defaults() -> dict[str, Any]:
    """Sizes for the current profile: the shared heap (MB), requests per GC mode, workers."""
    from labkit import profile

    return {
        "heap_mb": int(profile.pick(160, 48, 48)),
        "requests": int(profile.pick(2000, 600)),
        "workers": 2,
        "steps": 4,
        "valgrind_requests": int(profile.pick(100, 20)),
    }


def web_env(st: Any) -> dict[str, str]:
    """Environment for labkit's web apps: where the stack's Postgres and memcached answer."""
    pg, mc = st.endpoint("postgres"), st.endpoint("memcached")
    return {"LABKIT_WEB_DSN": pg.dsn, "LABKIT_WEB_MC": f"{mc.host}:{mc.port}"}


# ------------------------------------------------------------------------------------------- memory
@dataclass
class MemoryRun:
    """One gunicorn, one GC mode: per-worker memory after each batch of requests."""

    mode: str
    heap_mb: float
    workers: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # mode, requests, pid, rss, pss, private, shared
    full_gcs: dict[int, int] = field(default_factory=dict)  # worker pid -> full collections seen
    served: dict[int, int] = field(default_factory=dict)  # worker pid -> requests served
    errors: int = 0

    def after(self) -> list[dict[str, Any]]:
        last = max(r["requests"] for r in self.rows)
        return [r for r in self.rows if r["requests"] == last]

    def private_after(self) -> float:
        """Median private memory per worker (MB) after the last batch."""
        import statistics

        return float(statistics.median(r["private"] for r in self.after()))


def memory_run(
    st: Any,
    gc_mode: str = "default",
    *,
    heap_mb: float = 48,
    requests: int = 800,
    workers: int = 2,
    steps: int = 4,
    clients: int = 4,
    seed: int = 0,
) -> MemoryRun:
    """Start gunicorn with ``gc_mode``, measure every worker before and after each of ``steps`` batches."""
    from labkit.load import Uniform, Workload, run
    from labkit.load.http import http

    if gc_mode not in GC_MODES:
        raise BadParameter(f"gc_mode={gc_mode!r}: use one of {', '.join(GC_MODES)}")
    if heap_mb < 0 or requests < steps or steps < 1:
        raise BadParameter(f"need heap_mb >= 0, steps >= 1 and requests >= steps (got {heap_mb}, {steps}, {requests})")
    name = f"gunicorn-{gc_mode}"
    svc = st.add(
        "web",
        name=name,
        provider="local",
        server="gunicorn",
        workers=workers,
        preload=True,
        env={**web_env(st), "LABKIT_WEB_HEAP_MB": str(heap_mb), "LABKIT_WEB_GC": gc_mode},
    )
    out = MemoryRun(gc_mode, heap_mb, workers)
    lock = threading.Lock()

    def seen(ctx: Any, r: Any) -> None:
        pid = int(r.headers.get("x-worker-pid", 0))
        with lock:
            out.served[pid] = out.served.get(pid, 0) + 1
            out.full_gcs[pid] = max(out.full_gcs.get(pid, 0), int(r.headers.get("x-full-gc", 0)))

    try:
        web = http(svc.endpoint)
        op = web.get_op(lambda o: f"/feed?user={o.rank + 1}", on_response=seen)
        done = 0
        for step in range(steps + 1):
            for pid in svc.worker_pids():
                out.rows.append({"mode": gc_mode, "requests": done, "pid": pid, **smaps_rollup(pid)})
            if step == steps:
                break
            batch = requests // steps
            res = run(
                op,
                Workload(keys=Uniform(1_000_000), clients=clients, ops=batch, duration=600, seed=seed * 1000 + step),
                driver=web,
            )
            out.errors += res.error_count
            done += res.ops
    finally:
        st.remove(name)
    return out


def compare_gc(st: Any, modes: tuple[str, ...] = GC_MODES, **kw: Any) -> dict[str, MemoryRun]:
    """:func:`memory_run` for each GC mode, one after the other (same heap, same requests)."""
    return {m: memory_run(st, m, **kw) for m in modes}


def memory_table(results: dict[str, MemoryRun]) -> pd.DataFrame:
    """Per GC mode: memory per worker (median over workers) before and after the requests."""
    import pandas as pd

    rows = []
    for mode, r in results.items():
        first = min(x["requests"] for x in r.rows)
        before = pd.DataFrame([x for x in r.rows if x["requests"] == first]).median(numeric_only=True)
        after = pd.DataFrame(r.after()).median(numeric_only=True)
        rows.append(
            {
                "GC mode": mode,
                "requests": int(after["requests"]),
                "private before (MB)": before["private"],
                "private after (MB)": after["private"],
                "shared after (MB)": after["shared"],
                "PSS after (MB)": after["pss"],
                "RSS after (MB)": after["rss"],
                "full collections per worker": float(pd.Series(list(r.full_gcs.values()) or [0]).median()),
            }
        )
    return pd.DataFrame(rows).set_index("GC mode").round(1)


def plot_memory(results: dict[str, MemoryRun]) -> Any:
    """Private and shared memory per worker (median) against requests served, one line per GC mode."""
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for mode, r in results.items():
        df = pd.DataFrame(r.rows).groupby("requests").median(numeric_only=True)
        for ax, col in zip(axes, ("private", "shared")):
            ax.plot(df.index, df[col], marker="o", label=mode)
    for ax, what in zip(axes, ("private (USS)", "shared with the other processes")):
        ax.set_xlabel("requests served by the server")
        ax.set_ylabel(f"{what} per worker (MB)")
        ax.grid(alpha=0.3)
    axes[0].legend(title="GC mode")
    fig.suptitle(
        f"gunicorn --preload, {next(iter(results.values())).workers} sync workers, "
        f"{next(iter(results.values())).heap_mb:g} MB shared heap"
    )
    fig.tight_layout()
    return fig


def check_freeze_keeps_memory_shared(results: dict[str, MemoryRun], factor: float = 1.3) -> None:
    """Claims: a full collection ran in the default-GC workers, and with ``gc.freeze()`` the private memory
    per worker after the requests is at least ``factor`` times lower than with the default GC."""
    default, frozen = results["default"], results["freeze"]
    ctx = f"{default.heap_mb:g} MB heap, {max(r['requests'] for r in default.rows)} requests, {default.workers} workers"
    checkpoint(
        "a full collection ran in the default-GC workers",
        min(default.full_gcs.values(), default=0),
        at_least=1,
        context=ctx,
    )
    checkpoint(
        f"gc.freeze() keeps private memory per worker at least {factor:g}x lower than the default GC",
        default.private_after() / max(frozen.private_after(), 1e-9),
        at_least=factor,
        context=f"{ctx}: {default.private_after():.1f} MB vs {frozen.private_after():.1f} MB private",
    )


# ------------------------------------------------------------------------------- instructions
def feed_fixture(dsn: str, users: int = 20) -> Path:
    """The feed rows of ``users`` viewers, fetched from Postgres and saved for the counting runs."""
    import psycopg

    from labkit.webapp import core

    cfg = core.Config({"LABKIT_WEB_USERS": "2000"})
    with psycopg.connect(dsn) as conn:
        feeds = {
            u: [list(x) for x in conn.execute(core.FEED_SQL, (core.following(cfg, u),)).fetchall()]
            for u in range(1, users + 1)
        }
    path = paths.home() / "lesson04" / "feeds.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(feeds))
    return path


def _count(fixture: Path, render: str, n: int, method: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LABKIT_WEB_RENDER": render, "PYTHONHASHSEED": "0", "LABKIT_WEB_DSN": ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.source_root()), env.get("PYTHONPATH")]))
    # -S: no site-packages (the app needs only the stdlib and labkit): less start-up to count and subtract
    argv = [sys.executable, "-S", "-m", "labkit.webapp.bench", str(fixture), str(n)]
    if method == "valgrind":
        out = fixture.parent / f"cachegrind-{render}-{n}.out"
        argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}", *argv]
    else:
        argv.append("--cpu")
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _instructions(stderr: str) -> int:
    for line in stderr.splitlines():
        if "I   refs:" in line or "I refs:" in line:
            return int(line.split(":")[-1].strip().replace(",", ""))
    raise RuntimeError(f"cachegrind printed no instruction count:\n{stderr[-2000:]}")


def instructions_per_request(
    dsn: str, *, requests: int = 60, renderers: tuple[str, ...] = RENDERERS, method: str = "auto"
) -> dict[str, Any]:
    """Instructions (valgrind) or CPU µs (``--cpu``) per /feed request through the WSGI app, per renderer.

    Each renderer is run twice, with 0 and with ``requests`` measured requests after the same warm-up; the
    difference divided by ``requests`` is the cost of one request, start-up and imports cancelled out.
    """
    if method == "auto":
        method = "valgrind" if shutil.which("valgrind") else "cpu"
    if method not in ("valgrind", "cpu"):
        raise BadParameter(f"method={method!r}: use 'valgrind', 'cpu' or 'auto'")
    if requests < 1:
        raise BadParameter(f"requests={requests}: count at least 1 request")
    fixture = feed_fixture(dsn)
    out: dict[str, Any] = {
        "method": method,
        "requests": requests,
        "unit": "instructions" if method == "valgrind" else "CPU µs",
    }
    if method == "valgrind":  # all counting runs at once: each is single-threaded and ~50x slower
        procs = {(r, n): _count(fixture, r, n, method) for r in renderers for n in (0, requests)}
        errs = {k: p.communicate()[1] for k, p in procs.items()}
        for k, p in procs.items():
            if p.returncode != 0:
                raise RuntimeError(f"the counting run {k} failed ({p.returncode}):\n{errs[k][-2000:]}")
        for r in renderers:
            out[r] = (_instructions(errs[(r, requests)]) - _instructions(errs[(r, 0)])) / requests
    else:
        for r in renderers:
            p = _count(fixture, r, requests, method)
            so, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"the timing run failed ({p.returncode}):\n{err[-2000:]}")
            out[r] = json.loads(so)["cpu_seconds"] / requests * 1e6
    return out


def instructions_table(counts: dict[str, Any]) -> pd.DataFrame:
    """Work per request for each renderer, and how much the optimization saves."""
    import pandas as pd

    renderers = [r for r in RENDERERS if r in counts]
    df = pd.DataFrame(
        [
            {
                "renderer": r,
                f"{counts['unit']} per request": round(counts[r]),
                "measured with": "valgrind cachegrind"
                if counts["method"] == "valgrind"
                else "CPU time (valgrind not installed)",
                "requests counted": counts["requests"],
            }
            for r in renderers
        ]
    ).set_index("renderer")
    if "naive" in counts and "cached" in counts:
        df["x fewer than naive"] = [round(counts["naive"] / max(counts[r], 1e-9), 1) for r in renderers]
    return df


def check_optimization(
    counts: dict[str, Any], factor: float = 5.0, before: str = "naive", after: str = "cached"
) -> None:
    """Claim: the optimization lowers the work per request by at least ``factor``x (same counting method)."""
    checkpoint(
        f"the cached serializer cuts the work per request by at least {factor:g}x",
        counts[before] / max(counts[after], 1e-9),
        at_least=factor,
        context=f"{before}: {counts[before]:,.0f} vs {after}: {counts[after]:,.0f} {counts['unit']} "
        f"per request ({counts['method']}, {counts['requests']} requests)",
    )


# ---------------------------------------------------------------------------------------- exercise
def check_private_probe(private_mb: Callable[[int], float], st: Any, *, tolerance: float = 0.05) -> bool | None:
    """Run the learner's ``private_mb(pid) -> float`` on every process of a real gunicorn and compare it with
    the kernel's own sum (smaps_rollup) and psutil's USS. Prints PASS, what differs, or 'Not attempted yet'."""
    svc = st.add(
        "web",
        name="gunicorn-probe",
        provider="local",
        server="gunicorn",
        workers=2,
        preload=True,
        env={**web_env(st), "LABKIT_WEB_HEAP_MB": "8"},
    )
    try:
        pids = [svc.master().pid, *svc.worker_pids()]
        for pid in pids:
            before = smaps_rollup(pid)["private"]  # a live process: read the kernel's count around the call
            try:
                got = float(private_mb(pid))
            except NotImplementedError:
                print("Not attempted yet: write private_mb(pid) in the cell above, then run this cell again.")
                return None
            want = smaps_rollup(pid)["private"]
            uss = psutil.Process(pid).memory_full_info().uss / 2**20
            lo, hi = min(before, want), max(before, want)
            if not lo * (1 - tolerance) - 0.5 <= got <= hi * (1 + tolerance) + 0.5:
                raise CheckpointFailed(
                    f"private_mb({pid}) returned {got:.1f} MB but the process has {want:.1f} MB private "
                    f"(psutil USS {uss:.1f} MB; its RSS is {smaps_rollup(pid)['rss']:.1f} MB). Sum Private_Clean "
                    "and Private_Dirty of /proc/<pid>/smaps_rollup (in kB) and divide by 1024."
                )
    finally:
        st.remove("gunicorn-probe")
    checkpoint("exercise: private_mb matches the kernel's count on every gunicorn process", len(pids), at_least=3)
    return True
