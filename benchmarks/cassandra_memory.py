"""What each light-profile setting costs a Cassandra node in memory, and what a 3-node cluster needs under load.

    python benchmarks/cassandra_memory.py                    # every step, idle, then the 3-node workload
    python benchmarks/cassandra_memory.py --steps 0,-1       # only the first (old) and the last (shipped) step
    python benchmarks/cassandra_memory.py --no-cluster --idle 30 --nmt

Idle rows: one node per step, started cold (new data directories), left idle ``--idle`` seconds after it
answers CQL, then measured: RSS and PSS of its JVM (psutil; PSS shares the JDK's libraries among the JVMs
of a cluster) and, with ``--nmt``, the JVM's own account of its native memory (``jcmd PID
VM.native_memory summary``, -XX:NativeMemoryTracking=summary: on in measurement runs only, it costs a few
MB itself). The steps are cumulative: each adds one setting to the one above, starting from the light
profile as it was before issue 18 and ending with the shipped one (LIGHT_JVM and LIGHT_YAML in
labkit/services/cassandra/flags.py; the script checks that its last step is exactly what ships).

Cluster row: a 3-node RF=3 cluster (light profile as shipped, or --cluster-step N) runs lesson 05's
workload (the lagging-replica experiment over every consistency pair, then the lightweight-transaction
experiment, at the light profile's sizes) while the JVMs' RSS and PSS are sampled every 0.5 s; the row
shows the idle total and the peak total.

Measured here (2 cores, load 8-11), idle node RSS / PSS alone: before 641 / 637 MB; serial GC, heap 64->192 MB,
code cache 32 MB, small Netty arena, 8 MiB caches, on-heap memtables 402 / 398; 4 MiB network cache (shipped)
386-390. Probes not kept: heap 160 MB (no change: the heap only commits what it uses), 4 MiB commitlog
segments (no change), MinHeapFreeRatio 10 / MaxHeapFreeRatio 30 (-19 MB, more full collections), -Xmn16m
(-14 MB). ~150 MB of an idle node's RSS is file-backed (the JDK's lib/modules, libjvm, the CDS archive),
shared by every JVM on the machine, so PSS in a cluster is lower. 3 nodes under lesson 05's workload: peak
1245 MB RSS summed, 945 MB PSS. Targets (issue 18): <= 400 MB RSS per idle node, <= 1300 MB for
the cluster under load, cold start of one node < 5 s and of three < 12 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from labkit.services import cassandra as cas  # noqa: E402

# The light profile before issue 18 (heap 256 MB fixed, G1, C1 JIT, 16 MiB caches, 32 MiB memtables).
BEFORE_JVM = [
    "-Xms256m",
    "-Xmx256m",
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    "-XX:TieredStopAtLevel=1",
    "-XX:ReservedCodeCacheSize=64m",
    "-XX:MaxDirectMemorySize=192m",
    "-XX:CICompilerCount=2",
]
BEFORE_YAML: dict[str, Any] = {
    "key_cache_size": "0MiB",
    "counter_cache_size": "0MiB",
    "file_cache_size": "16MiB",
    "networking_cache_size": "16MiB",
    "memtable_heap_space": "32MiB",
    "memtable_offheap_space": "32MiB",
    "concurrent_compactors": 1,
}
G1 = [
    f for f in BEFORE_JVM if f.startswith("-XX:") and ("G1" in f or "Pause" in f or "Tenuring" in f or "RefProc" in f)
]
G1 += ["-XX:InitiatingHeapOccupancyPercent=70"]


@dataclass
class Step:
    """One cumulative change: a label and what it does to the flags and the yaml of the step above."""

    label: str
    edit: Callable[[list[str], dict[str, Any]], None]
    carry: bool = True  # False: a probe, measured on top of the steps above but not kept (not shipped)


def _swap(flags: list[str], prefix: str, new: str | None) -> None:
    """Replace (or drop, new=None) the flag starting with prefix; append new if none was there."""
    hits = [i for i, f in enumerate(flags) if f.startswith(prefix)]
    for i in reversed(hits):
        del flags[i]
    if new is not None:
        flags.insert(hits[0] if hits else len(flags), new)


def _serial(flags: list[str], _yaml: dict[str, Any]) -> None:
    for f in G1:
        if f in flags:
            flags.remove(f)
    flags.insert(2, "-XX:+UseSerialGC")


def _heap(mb: int) -> Callable[[list[str], dict[str, Any]], None]:
    def edit(flags: list[str], _yaml: dict[str, Any]) -> None:
        fixed = [f[4:] for f in flags if f.startswith("-Xms")] == [f[4:] for f in flags if f.startswith("-Xmx")]
        _swap(flags, "-Xmx", f"-Xmx{mb}m")
        if fixed:  # -Xms == -Xmx: keep the heap fixed at the new size
            _swap(flags, "-Xms", f"-Xms{mb}m")

    return edit


def _flag(prefix: str, new: str | None) -> Callable[[list[str], dict[str, Any]], None]:
    return lambda flags, _yaml: _swap(flags, prefix, new)


def _yaml(**kv: Any) -> Callable[[list[str], dict[str, Any]], None]:
    return lambda _flags, yaml: yaml.update(kv)


def _netty(flags: list[str], _yaml: dict[str, Any]) -> None:
    _swap(flags, "-Dio.netty.allocator.useCacheForAllThreads", None)
    _swap(flags, "-Dio.netty.allocator.maxOrder", None)
    flags += [
        "-Dio.netty.allocator.numDirectArenas=1",
        "-Dio.netty.allocator.numHeapArenas=1",
        "-Dio.netty.allocator.maxOrder=9",
        "-Dio.netty.allocator.useCacheForAllThreads=false",
    ]


STEPS = [
    Step("before (G1, heap 256 fixed, caches 16 MiB, memtables 32/32)", lambda f, y: None),
    Step("+ SerialGC instead of G1", _serial),
    Step("+ heap 192 MB (-Xmx)", _heap(192)),
    Step("+ -Xms64m (heap grows on demand)", _flag("-Xms", "-Xms64m")),
    Step(
        "+ code cache 32 MB, 1 compiler thread",
        lambda f, y: (
            _flag("-XX:ReservedCodeCacheSize", "-XX:ReservedCodeCacheSize=32m")(f, y),
            _flag("-XX:CICompilerCount", "-XX:CICompilerCount=1")(f, y),
        ),
    ),  # noqa: E501
    Step("+ netty: 1 arena, 4 MiB chunks, no thread caches", _netty),
    Step("+ file/networking cache 8 MiB", _yaml(file_cache_size="8MiB", networking_cache_size="8MiB")),
    Step(
        "+ memtables on heap, 24 MiB (offheap 16)",
        _yaml(memtable_allocation_type="heap_buffers", memtable_heap_space="24MiB", memtable_offheap_space="16MiB"),
    ),
    Step("+ file/networking cache 4 MiB", _yaml(file_cache_size="4MiB", networking_cache_size="4MiB")),
    Step("probe, not kept: heap 160 MB (-Xmx)", _heap(160), carry=False),
    Step("probe, not kept: commitlog segments 4 MiB", _yaml(commitlog_segment_size="4MiB"), carry=False),
    Step(
        "probe, not kept: heap grows later (MinHeapFreeRatio 10, Max 30)",
        lambda f, y: f.extend(["-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30"]),
        carry=False,
    ),
    Step("probe, not kept: young generation 16 MB (-Xmn16m)", lambda f, y: f.append("-Xmn16m"), carry=False),
]


def step_settings(upto: int) -> tuple[list[str], dict[str, Any]]:
    """The flags (heap filled in) and yaml of step `upto`, every step before it applied."""
    flags, yaml = list(BEFORE_JVM), dict(BEFORE_YAML)
    for i, s in enumerate(STEPS[1 : upto + 1], start=1):
        if s.carry or i == upto:
            s.edit(flags, yaml)
    return flags, yaml


def last_kept() -> int:
    return max(i for i, s in enumerate(STEPS) if s.carry)


def shipped_settings() -> tuple[list[str], dict[str, Any]]:
    c = cas.LocalCassandra("probe", profile="light")
    return c.profile_jvm(), c.profile_yaml()


class Variant(cas.LocalCassandra):
    """A local cluster whose profile settings are given explicitly (one benchmark step)."""

    def __init__(self, name: str, nodes: str, flags: list[str], yaml: dict[str, Any]) -> None:
        heap = next(int(f[4:-1]) for f in flags if f.startswith("-Xmx"))
        super().__init__(name, nodes=nodes, profile="light", heap_mb=heap)
        self._flags, self._yaml = flags, yaml

    def profile_jvm(self) -> list[str]:
        return list(self._flags)

    def profile_yaml(self) -> dict[str, Any]:
        return dict(self._yaml)


# ------------------------------------------------------------------------------------------------- measuring
def smaps(pid: int) -> dict[str, float]:
    """Anonymous and file-backed resident MB (mapped jars, the CDS archive, commitlog segments) of one process."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Anonymous", "Rss", "Pss_File", "Pss_Anon"):
                out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    if "Rss" in out and "Anonymous" in out:
        out["File"] = out["Rss"] - out["Anonymous"]
    return out


def mem_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process in MB."""
    info = psutil.Process(pid).memory_full_info()
    return info.rss / 2**20, getattr(info, "pss", info.rss) / 2**20


NMT_KEYS = ("Java Heap", "Class", "Metaspace", "Thread", "Code", "GC", "Internal", "Other", "Symbol", "Arena Chunk")


def nmt(pid: int) -> dict[str, float]:
    """Committed MB per NMT category, and the total (needs -XX:NativeMemoryTracking=summary)."""
    jcmd = shutil.which("jcmd") or str(Path(os.path.realpath(shutil.which("java") or "java")).parent / "jcmd")
    try:
        out = subprocess.run(
            [jcmd, str(pid), "VM.native_memory", "summary", "scale=KB"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    res: dict[str, float] = {}
    m = re.search(r"Total: reserved=\d+KB, committed=(\d+)KB", out)
    if m:
        res["total"] = int(m.group(1)) / 1024
    for key in NMT_KEYS:
        m = re.search(rf"-\s+{re.escape(key)} \(reserved=\d+KB, committed=(\d+)KB", out)
        if m:
            res[key] = int(m.group(1)) / 1024
    return res


@dataclass
class Sampler:
    """Samples the summed RSS and PSS of some processes every `interval` seconds in a thread; keeps the peak."""

    pids: list[int]
    interval: float = 0.5
    peak_rss: float = 0.0
    peak_pss: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0.0
            for pid in self.pids:
                try:
                    r, p = mem_mb(pid)
                except psutil.Error:
                    continue
                rss, pss = rss + r, pss + p
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def idle_row(i: int, args: argparse.Namespace) -> dict[str, Any]:
    flags, yaml = step_settings(i)
    if args.nmt:
        flags = [*flags, "-XX:NativeMemoryTracking=summary"]
    c = Variant(f"mem-step{i}", "dc1:1", flags, yaml)
    t0 = time.monotonic()
    try:
        c.start()
        start_s = time.monotonic() - t0
        time.sleep(args.idle)
        pid = int(c.nodes[0].ref["pid"])
        rss, pss = mem_mb(pid)
        detail = nmt(pid) if args.nmt else {}
        detail.update(smaps(pid))
    finally:
        c.stop()
        c.remove_data()
    return {"step": i, "setting": STEPS[i].label, "start_s": start_s, "rss": rss, "pss": pss, "nmt": detail}


def lesson05_workload(c: cas.LocalCassandra) -> None:
    """Lesson 05's experiments at the light profile's sizes (what a learner on Binder runs)."""
    from labkit.lessons import consistency as cons

    d = cons.defaults()
    lab = cons.Lab(c)
    try:
        cons.lagging_replica(
            lab,
            clients_per_pair=d["clients_per_pair"],
            ops_per_client=d["ops_per_client"],
            keys_per_pair=d["keys_per_pair"],
        )
        cons.lwt_latency(lab, clients=d["lwt_clients"], ops=d["lwt_ops"])
    finally:
        lab.close()


def cluster_row(step: int | None, args: argparse.Namespace) -> dict[str, Any]:
    flags, yaml = step_settings(step) if step is not None else shipped_settings()
    c = Variant("mem-cluster", "dc1:3", flags, yaml)
    t0 = time.monotonic()
    try:
        c.start()
        start_s = time.monotonic() - t0
        time.sleep(args.idle)
        pids = [int(n.ref["pid"]) for n in c.nodes]
        idle = [mem_mb(p) for p in pids]
        t1 = time.monotonic()
        with Sampler(pids) as s:
            lesson05_workload(c)
        work_s = time.monotonic() - t1
        after = [mem_mb(p) for p in pids]
    finally:
        c.stop()
        c.remove_data()
    label = "shipped light profile" if step is None else STEPS[step].label
    return {
        "setting": f"3 nodes, {label}",
        "start_s": start_s,
        "idle_rss": sum(r for r, _ in idle),
        "idle_pss": sum(p for _, p in idle),
        "peak_rss": max(s.peak_rss, sum(r for r, _ in after)),
        "peak_pss": max(s.peak_pss, sum(p for _, p in after)),
        "max_node_rss": max(r for r, _ in after),
        "work_s": work_s,
    }


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="all", help="comma-separated step indexes (negative from the end), or all")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds a node idles after it answers CQL")
    ap.add_argument("--nmt", action="store_true", help="also the JVM's native memory summary per step (jcmd)")
    ap.add_argument("--no-cluster", action="store_true", help="skip the 3-node workload row")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle rows")
    ap.add_argument("--cluster-step", type=int, default=None, help="the 3-node row with this step's settings")
    args = ap.parse_args()
    flags, yaml = step_settings(last_kept())
    shipped = shipped_settings()
    if (sorted(flags), yaml) != (sorted(shipped[0]), shipped[1]):
        print(f"warning: the last step is not the shipped light profile:\n  steps: {flags} {yaml}\n  ships: {shipped}")
    home = tempfile.mkdtemp(prefix="labkit-cmem-")
    os.chmod(home, 0o755)
    from labkit import paths

    os.environ.setdefault("LABKIT_CACHE", str(paths.cache_dir()))
    os.environ["LABKIT_HOME"] = home
    os.environ.setdefault("LABKIT_PROFILE", "light")
    from labkit.services.cassandra.jars import fetch_cassandra

    fetch_cassandra(progress=False)
    print(f"cassandra_memory: {os.cpu_count()} cores, idle {args.idle:g} s, state in {home}\n", flush=True)
    if not args.no_idle:
        picks = range(len(STEPS)) if args.steps == "all" else [int(x) % len(STEPS) for x in args.steps.split(",")]
        rows = []
        for i in picks:
            r = idle_row(i, args)
            rows.append(r)
            print(
                f"  step {i}: start {r['start_s']:.1f} s, RSS {r['rss']:.0f} MB, PSS {r['pss']:.0f} MB, "
                + ", ".join(f"{k} {v:.0f}" for k, v in r["nmt"].items()),
                flush=True,
            )
        head = ["step", "setting (cumulative)", "RSS MB", "PSS MB", "anon MB", "file MB", "cold start s"]
        if args.nmt:
            head += ["NMT total", "heap", "GC", "other", "metaspace", "thread", "code"]
        body = []
        for r in rows:
            n = r["nmt"]
            line = [str(r["step"]), r["setting"], f"{r['rss']:.0f}", f"{r['pss']:.0f}"]
            line += [f"{n.get('Anonymous', 0):.0f}", f"{n.get('File', 0):.0f}", f"{r['start_s']:.1f}"]
            if args.nmt:
                keys = ("total", "Java Heap", "GC", "Other", "Metaspace", "Thread", "Code")
                line += [f"{n.get(k, 0):.0f}" for k in keys]
            body.append(line)
        print("\nOne idle node (target: RSS <= 400 MB; cold start < 5 s):")
        table(head, body)
    if not args.no_cluster:
        r = cluster_row(args.cluster_step, args)
        print("\n3-node RF=3 cluster, lesson 05 workload (target: <= 1300 MB in all; cold start < 12 s):")
        table(
            ["cluster", "cold start s", "idle RSS", "idle PSS", "peak RSS", "peak PSS", "max node RSS", "workload s"],
            [
                [
                    r["setting"],
                    f"{r['start_s']:.1f}",
                    f"{r['idle_rss']:.0f}",
                    f"{r['idle_pss']:.0f}",
                    f"{r['peak_rss']:.0f}",
                    f"{r['peak_pss']:.0f}",
                    f"{r['max_node_rss']:.0f}",
                    f"{r['work_s']:.0f}",
                ]
            ],
        )
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
