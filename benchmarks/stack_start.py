"""How long until a server answers: labkit's cold start per service, attaching to a running stack, and the
same servers started by hand with their own tools (the peer), measured in the same run.

    python benchmarks/stack_start.py [--runs 5] [--no-cassandra] [--docker]

--docker adds the docker provider's cold start per service beside the local provider's (ratio docker/local),
Postgres, memcached and a one-node Cassandra (unless --no-cassandra; the local node measured in the same run),
where a Docker daemon answers; CI: `.ci/docker-up && .ci/docker-exec .venv/bin/python benchmarks/stack_start.py
--docker --cassandra-runs 1; .ci/docker-down` (inside its engine's network namespace, on its local images).

Prints a table: median, min-max spread, and the ratio labkit/peer. Targets on a 2-core machine: Postgres
ready < 1.2 s (issue 18; a new server copies a cached initdb template, so a cache's first start pays initdb),
memcached < 0.5 s, attach < 1 s; Cassandra (issue 18) one node < 5 s, 3 nodes < 12 s, <= 400 MB per idle node
(benchmarks/cassandra_memory.py measures the memory setting by setting). Cassandra's "ready" is a
fresh driver session running a query, and for 3 nodes all 3 UP in its view and an RF=3 QUORUM write and read
(benchmarks/_cassandra_bench.py); below the table, where each start's time went (phases from the node's log) and
the JVMs' CPU-seconds until ready, which the machine's load does not inflate the way it inflates wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labkit.services._process import free_port, tcp_open, unprivileged_user, wait_for  # noqa: E402


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def labkit_cold(kind: str) -> Callable[[], None]:
    def run() -> None:
        import labkit

        st = labkit.stack(kind, attach=False)
        st.close()  # stop time is not part of "ready", but keeps the next run cold and clean

    return run


def measure_labkit_cold(kind: str, runs: int, provider: str = "local") -> list[float]:
    import labkit

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        st = labkit.stack(kind, attach=False, provider=provider)
        times.append(time.perf_counter() - start)
        st.close()
    return times


def peer_postgres(runs: int) -> list[float]:
    """initdb + `pg_ctl start -w` + a first query, by hand: what labkit automates."""
    from labkit.services.postgres import pg_binary

    user = unprivileged_user()
    prefix = ["runuser", "-u", user.pw_name, "--"] if user else []
    times = []
    for _ in range(runs):
        d = Path(tempfile.mkdtemp(prefix="peer-pg-"))
        os.chmod(d, 0o777)
        port = free_port()
        start = time.perf_counter()
        subprocess.run(
            prefix
            + [
                str(pg_binary("initdb")),
                "-D",
                str(d / "data"),
                "-U",
                "bench",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            prefix
            + [
                str(pg_binary("pg_ctl")),
                "-D",
                str(d / "data"),
                "-w",
                "-l",
                str(d / "log"),
                "-o",
                f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        import psycopg

        dsn = f"host=127.0.0.1 port={port} user=bench dbname=postgres"
        wait_for("peer postgres", lambda dsn=dsn: psycopg.connect(dsn), 30)
        times.append(time.perf_counter() - start)
        subprocess.run(
            prefix + [str(pg_binary("pg_ctl")), "-D", str(d / "data"), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(d, ignore_errors=True)
    return times


def peer_memcached(runs: int) -> list[float]:
    """`memcached` spawned by hand, ready when its port accepts a connection."""
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    user = unprivileged_user()
    times = []
    for _ in range(runs):
        port = free_port()
        start = time.perf_counter()
        proc = subprocess.Popen(
            [binary, "-l", "127.0.0.1", "-p", str(port), "-m", "64"] + (["-u", user.pw_name] if user else [])
        )
        wait_for("peer memcached", lambda port=port: tcp_open("127.0.0.1", port), 10)
        times.append(time.perf_counter() - start)
        proc.terminate()
        proc.wait()
    return times


def measure_attach(runs: int) -> tuple[list[float], list[float]]:
    """Attach to a running `labkit up` stack: in-process, and from a fresh Python (import included)."""
    import labkit
    from labkit.cli import main as cli

    cli(["up", "postgres", "memcached"])
    try:
        inproc = []
        for _ in range(runs):
            start = time.perf_counter()
            st = labkit.stack("postgres", "memcached")
            inproc.append(time.perf_counter() - start)
            assert not st.owned, "expected to attach, but the stack started its own servers"
            st.close()
        fresh = timed(
            lambda: subprocess.run(
                [sys.executable, "-c", "import labkit; labkit.stack('postgres','memcached')"], check=True
            ),
            runs,
        )
    finally:
        cli(["down"])
    return inproc, fresh


def row(
    what: str, times: list[float], peer: list[float] | None = None, target: float | None = None, extra: str = ""
) -> list[str]:
    med = statistics.median(times)
    ratio = f"{med / statistics.median(peer):.2f}" if peer else "-"
    ok = "-" if target is None else ("yes" if med < target else "NO")
    return [
        what,
        f"{med:.3f}",
        f"{min(times):.3f}-{max(times):.3f}",
        ratio,
        f"{statistics.median(peer):.3f}" if peer else "-",
        f"< {target:g}" if target else "-",
        ok,
        extra,
    ]


CASSANDRA_TARGETS = {"single node": 5.0, "3-node": 12.0}  # seconds to ready (issue 18); RSS target below
RSS_TARGET_MB = 400.0


def cassandra_row(r: dict) -> list[str]:
    """A row of the table from one of _cassandra_bench's measurements, judged against the issue's targets."""
    rss = f"RSS/node {r['rss_mb']:.0f} MB" if r.get("rss_mb") else ""
    if r["median_s"] is None:  # the memory row: the target is for an idle node
        idle = r.get("idle_rss_mb", r["rss_mb"])
        ok = "yes" if idle <= RSS_TARGET_MB else "NO"
        return [
            "cassandra RSS per idle node (light)",
            f"{idle:.0f} MB",
            f"max {r.get('max_idle_rss_mb', idle):.0f} MB",
            "-",
            "-",
            f"<= {RSS_TARGET_MB:.0f} MB",
            ok,
            f"after 2000 writes: median {r['rss_mb']:.0f}, max {r.get('max_rss_mb', r['rss_mb']):.0f} MB",
        ]
    target = next((t for key, t in CASSANDRA_TARGETS.items() if key in r["what"]), None)
    ok = "-" if target is None else ("yes" if r["median_s"] < target else "NO")
    return [
        r["what"],
        f"{r['median_s']:.1f}",
        f"{r['min_s']:.1f}-{r['max_s']:.1f}",
        "-",
        "-",
        f"< {target:g}" if target else "-",
        ok,
        rss,
    ]


def docker_rows(args: argparse.Namespace, local: dict[str, list[float]]) -> list[list[str]]:
    """Container cold start (create, start, first real answer) per service; the ratio column is docker/local."""
    from labkit.services import docker_available, host_namespace_refusal, service_class

    def image(kind: str) -> str:  # the image the docker provider runs (LABKIT_IMAGE_<KIND> or the pinned official one)
        return str(service_class(kind, "docker")(kind).image)

    ok, why = docker_available()
    refusal = host_namespace_refusal()
    if not ok or refusal:
        print(f"(docker rows skipped: {refusal or why})")
        return []
    rows = []
    for kind in ("postgres", "memcached"):
        rows.append(
            row(
                f"{kind} docker cold start (s)",
                measure_labkit_cold(kind, args.runs, "docker"),
                local[kind],
                None,
                f"ratio: docker/local; image {image(kind)}",
            )
        )
    if not args.no_cassandra:
        runs = max(1, args.cassandra_runs)
        rows.append(
            row(
                "cassandra 1 node docker (s)",
                measure_labkit_cold("cassandra", runs, "docker"),
                measure_labkit_cold("cassandra", runs, "local"),
                None,
                f"ratio: docker/local; image {image('cassandra')}",
            )
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-cassandra", action="store_true", help="skip the Cassandra rows (they take minutes)")
    ap.add_argument("--cassandra-runs", type=int, default=3)
    ap.add_argument("--docker", action="store_true", help="also the docker provider's cold start per service")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be 1 or more")
    home = tempfile.mkdtemp(prefix="labkit-bench-")
    os.chmod(home, 0o755)
    from labkit import paths

    os.environ.setdefault("LABKIT_CACHE", str(paths.cache_dir()))
    os.environ["LABKIT_HOME"] = home
    print(f"stack_start: {args.runs} runs each, {os.cpu_count()} cores, state in {home}\n", flush=True)
    local = {k: measure_labkit_cold(k, args.runs, "local") for k in ("postgres", "memcached")}
    rows = [
        row(
            "postgres cold start (s)",
            local["postgres"],
            peer_postgres(args.runs),
            1.2,
            "peer: initdb + pg_ctl start -w",
        ),
        row(
            "memcached cold start (s)",
            local["memcached"],
            peer_memcached(args.runs),
            0.5,
            "peer: memcached spawned by hand",
        ),
    ]
    if args.docker:
        rows += docker_rows(args, local)
    inproc, fresh = measure_attach(args.runs)
    rows.append(row("attach to labkit up (s)", inproc, None, 1.0, "postgres+memcached, in-process"))
    rows.append(row("attach, fresh python (s)", fresh, None, None, "interpreter + import + attach"))
    notes: list[str] = []
    if not args.no_cassandra:
        try:
            from _cassandra_bench import measure_cassandra, phase_lines
        except ImportError as e:
            print(f"(Cassandra rows unavailable: {e})")
        else:
            measured = measure_cassandra(args.cassandra_runs)
            rows += [cassandra_row(r) for r in measured]
            notes = ["", "Cassandra start-up, where the time goes (median per phase):", *phase_lines(measured)]
    header = ["measure", "median", "min-max", "labkit/peer", "peer median", "target", "met", "notes"]
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print("\n".join(notes))
    print(f"\nload average during the run (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
