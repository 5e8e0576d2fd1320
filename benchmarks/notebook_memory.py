"""How much memory each notebook needs in the light profile (Binder: ~2 GB for everything), and how long it runs.

    python benchmarks/notebook_memory.py                    # every notebook in notebooks/
    python benchmarks/notebook_memory.py --only 05,09       # a subset, by number prefix
    python benchmarks/notebook_memory.py --limit-mb 2048    # also enforce Binder's limit while measuring

Each notebook runs on its own, the way CI runs it (pytest --nbval-lax, LABKIT_PROFILE=light unless set), with
its kernel and every server it starts inside one memory cgroup (labkit.cgroups.MemoryLimit: the pytest process
that drives the kernel is moved there before it starts anything, and children are born in their parent's
group). While it runs, the summed PSS of every process in the group is sampled every 0.5 s: PSS shares pages
that several processes map (the JDK's libraries across Cassandra nodes) among them, so the sum is what the
notebook really holds. The cgroup's own peak (memory.max_usage_in_bytes, or memory.peak) is shown beside it:
it also counts page cache (data files, commitlogs), which the kernel reclaims under a limit before it kills
anything. Without writable cgroups the tree is found by parentage instead (servers labkit detaches are then
found by their LABKIT_HOME on the command line) and the cgroup columns say "-".

Writes a CSV (notebook, peak_mb, seconds, plus cgroup_peak_mb, passed, oom_kills) to --csv (default
benchmarks/results/notebook_memory.csv) and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from labkit import cgroups  # noqa: E402


def pss_mb(pid: int) -> float:
    try:
        info = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return 0.0
    return getattr(info, "pss", info.rss) / 2**20


class Peak:
    """Samples the summed PSS of a set of processes (given by a function) in a thread and keeps the peak."""

    def __init__(self, pids: object, interval: float = 0.5) -> None:
        self.pids, self.interval, self.peak = pids, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(pss_mb(p) for p in self.pids()))  # type: ignore[operator]
            self._stop.wait(self.interval)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tree_without_cgroup(root: int, home: str) -> list[int]:
    """The process tree of `root`, plus processes whose command line names the run's LABKIT_HOME (servers)."""
    pids = set()
    try:
        pids |= {root} | {c.pid for c in psutil.Process(root).children(recursive=True)}
    except psutil.Error:
        pass
    for p in psutil.process_iter(["cmdline"]):
        if any(home in a for a in (p.info["cmdline"] or [])):
            pids.add(p.pid)
    return sorted(pids)


def run_notebook(nb: Path, python: str, limit_mb: float | None, use_cgroup: bool, timeout: float) -> dict:
    """Run one notebook under nbval in a fresh LABKIT_HOME; return its peak memory, cgroup peak and time."""
    home = tempfile.mkdtemp(prefix="labkit-nbmem-")
    os.chmod(home, 0o755)
    from labkit import paths

    env = dict(os.environ)
    env.setdefault("LABKIT_CACHE", str(paths.cache_dir()))
    env.setdefault("LABKIT_PROFILE", "light")
    env["LABKIT_HOME"] = home
    env["LABKIT_TEST_HOME_SET"] = "1"  # the root conftest keeps this home (and still stops what is left)
    env.pop("LABKIT_MEMORY_BUDGET_MB", None)  # this script is the one measuring
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", f"--timeout={int(timeout)}"]
    argv += [str(nb)]
    box = cgroups.MemoryLimit(f"nbmem-{nb.name[:2]}", mb=limit_mb or 1 << 20) if use_cgroup else None
    t0 = time.monotonic()
    try:
        preexec = (lambda: box.add(os.getpid())) if box is not None else None
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, preexec_fn=preexec, stdout=subprocess.PIPE, text=True)

        def pids() -> list[int]:
            return box.pids() if box is not None else tree_without_cgroup(proc.pid, home)

        with Peak(pids) as peak:
            out, _ = proc.communicate(timeout=timeout + 120)
        seconds = time.monotonic() - t0
        summary = (out.strip().splitlines() or [""])[-1]
        if proc.returncode != 0:  # keep pytest's report of what failed
            log = Path(tempfile.gettempdir()) / f"notebook_memory-{nb.stem}.log"
            log.write_text(out)
            summary += f"; report in {log}"
        return {
            "notebook": nb.name,
            "peak_mb": round(peak.peak),
            "seconds": round(seconds),
            "cgroup_peak_mb": round(box.peak_mb()) if box is not None else "-",
            "oom_kills": box.oom_kills() if box is not None else "-",
            "passed": proc.returncode == 0,
            "summary": summary,
        }
    finally:
        subprocess.run(
            [python, "-m", "labkit.cli", "down"], env=env, cwd=ROOT, capture_output=True, timeout=120, check=False
        )
        if box is not None:
            box.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated notebook number prefixes, e.g. 05,09")
    ap.add_argument("--limit-mb", type=float, default=None, help="enforce this memory limit (e.g. 2048)")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "notebook_memory.csv"))
    ap.add_argument("--timeout", type=float, default=1800, help="per-cell timeout in seconds")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
    if args.only:
        want = {w.strip().zfill(2) for w in args.only.split(",") if w.strip()}
        notebooks = [nb for nb in notebooks if nb.name[:2] in want]
        missing = want - {nb.name[:2] for nb in notebooks}
        if missing:
            ap.error(f"no notebook numbered {', '.join(sorted(missing))} in notebooks/")
    ok, why = cgroups.available("memory")
    if not ok:
        print(f"(no memory cgroup: {why}; measuring the process tree by parentage, no cgroup peak)")
        if args.limit_mb:
            ap.error("--limit-mb needs a writable memory cgroup")
    profile = os.environ.get("LABKIT_PROFILE", "light")
    print(f"notebook_memory: profile {profile}, {len(notebooks)} notebook(s), {os.cpu_count()} cores", flush=True)
    rows = []
    for nb in notebooks:
        r = run_notebook(nb, args.python, args.limit_mb, ok, args.timeout)
        rows.append(r)
        print(
            f"  {r['notebook']}: peak {r['peak_mb']} MB PSS, cgroup {r['cgroup_peak_mb']} MB, "
            f"{r['seconds']} s, {'passed' if r['passed'] else 'FAILED'} ({r['summary']})",
            flush=True,
        )
    cols = ["notebook", "peak_mb", "seconds", "cgroup_peak_mb", "passed", "oom_kills"]
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    print()
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\n(peak_mb: summed PSS of the kernel and every server it started, MB; written to {args.csv})")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
