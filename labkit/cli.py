"""The `labkit` command: doctor, up, down, status, logs, fetch, course.

labkit doctor                        what this machine can run, and what to install for the rest
labkit up [postgres memcached cassandra ...] [--nodes us:3,eu:2] [--inter-dc-delay-ms 40]
          [--postgres-servers 3] [--memory-mb 64]
labkit status [--json]               running services and their endpoints
labkit logs SERVICE [-n 50]
labkit down [--keep-data] [--purge]  stop everything labkit started (also orphans of killed kernels);
                                     --purge also removes your namespace from external (class) servers
labkit fetch cassandra               download Cassandra's jars from Maven Central ahead of time, and build
                                     their class-data sharing archive (faster node starts)
labkit course [NOTEBOOK...]          run the course headless: execute, render HTML, summarise checkpoints
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from labkit.errors import LabkitError


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_status(args: argparse.Namespace) -> int:
    from labkit.services import stack as stacks

    data = stacks.status()
    if args.json:
        print(json.dumps({"services": data}, indent=2))
        return 0
    if not data:
        print("No labkit servers are running. Start the shared stack with `labkit up`, or just open a notebook.")
        return 0
    rows = []
    for e in data:
        if "error" in e:
            print(f"! {e['error']}")
            continue
        rows.append(
            [
                e["stack"],
                e["name"],
                e["provider"],
                f"{e['host']}:{e['port']}",
                "up" if e["healthy"] else "DOWN",
                " ".join(map(str, e["pids"])) or "-",
            ]
        )
    if rows:
        _print_table(rows, ["stack", "service", "provider", "address", "health", "pids"])
    for e in data:
        if e.get("dsn"):
            print(f"{e['name']}: {e['dsn']}")
    return 0


MAX_POSTGRES_SERVERS = 8


def plan_up(args: argparse.Namespace) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
    """Check every argument of `labkit up` and return (provider, [(kind, name, options)]) before anything starts."""
    import math

    from labkit.errors import BadParameter
    from labkit.services import check_kind, choose_provider
    from labkit.services.base import check_int
    from labkit.services.stack import build

    kinds = [check_kind(k) for k in (args.services or ["postgres", "memcached"])]
    if len(set(kinds)) != len(kinds):
        raise BadParameter(
            f"`labkit up {' '.join(args.services)}` names a service twice: name each once "
            "(more Postgres servers: --postgres-servers N)"
        )
    provider = choose_provider(args.provider)
    servers = check_int("--postgres-servers", args.postgres_servers, 1, MAX_POSTGRES_SERVERS)
    given = (
        ("--nodes", args.nodes, "cassandra"),
        ("--inter-dc-delay-ms", args.inter_dc_delay_ms or None, "cassandra"),
        ("--memory-mb", args.memory_mb, "memcached"),
        ("--postgres-servers", None if servers == 1 else 1, "postgres"),
    )
    for flag, value, kind in given:
        if value is not None and kind not in kinds:
            raise BadParameter(
                f"{flag} applies to {kind}, which is not among the services to start: `labkit up {kind} {flag} ...`"
            )
    if not math.isfinite(args.inter_dc_delay_ms) or not 0 <= args.inter_dc_delay_ms <= 10_000:
        raise BadParameter(f"--inter-dc-delay-ms {args.inter_dc_delay_ms}: use 0 to 10000 ms (e.g. 40)")
    plan = []
    for kind in kinds:
        opts: dict[str, Any] = {}
        if kind == "cassandra" and args.nodes is not None:
            opts["nodes"] = args.nodes
        if kind == "cassandra" and args.inter_dc_delay_ms:
            opts["inter_dc_delay_ms"] = args.inter_dc_delay_ms
        if kind == "memcached" and args.memory_mb is not None:
            opts["memory_mb"] = args.memory_mb
        for i in range(servers if kind == "postgres" else 1):
            name = kind if i == 0 else f"{kind}-{i + 1}"
            build(kind, name, provider, opts)  # constructing checks every option; nothing runs yet
            plan.append((kind, name, opts))
    return provider, plan


def cmd_up(args: argparse.Namespace) -> int:
    from labkit.services.stack import Stack

    provider, plan = plan_up(args)
    if provider == "docker":
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # the CLI exits; containers must stay
    st = Stack.open_shared(provider)
    for kind, name, opts in plan:
        if name in st.services:
            if st.services[name].health().ok:
                print(f"{name}: already running at {st.services[name].endpoint.host}:{st.services[name].endpoint.port}")
                continue
            st.remove(name)
        print(f"{name}: starting ({st.provider}) ...", flush=True)
        svc = st.add(kind, name, **opts)
        print(f"{name}: up at {svc.endpoint.host}:{svc.endpoint.port} ({kind} {svc.version()})")
    print("Notebooks attach to this stack; `labkit status` shows it, `labkit down` stops it.")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from labkit.services import stack as stacks

    report = stacks.down(remove_data=not args.keep_data)
    if args.purge:
        _purge()
    if not report["stacks"] and not report["pids"] and not report["corrupt"] and not report["strays"]:
        print("Nothing to stop: no labkit stack is running (`labkit status` shows none).")
        return 0
    for p in report["corrupt"]:
        print(f"removed corrupt stack record {p}")
    if report["stacks"]:
        print(f"stopped stacks: {', '.join(report['stacks'])}")
    if report["pids"] or report["strays"]:
        print(f"stopped processes: {' '.join(map(str, sorted(set(report['pids'] + report['strays']))))}")
    return 0


def _purge() -> None:
    from labkit import config
    from labkit.services import external

    ns = external.namespace() if config.current().namespace else external.user_prefix() + "*"
    removed = external.purge()
    if not any(removed.values()):
        print(f"purge: nothing of namespace {ns} on the external servers")
        return
    print(
        f"purge: removed namespace {ns} from the external servers: {len(removed['schemas'])} Postgres schema(s) "
        f"{' '.join(removed['schemas'])}, {len(removed['keys'])} memcached key(s), "
        f"{len(removed['keyspaces'])} Cassandra keyspace(s) {' '.join(removed['keyspaces'])}".rstrip()
    )


def cmd_logs(args: argparse.Namespace) -> int:
    from labkit.services import stack as stacks

    print(stacks.recorded_service(args.service).logs(args.lines))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.what != "cassandra":
        raise LabkitError(f"nothing to fetch for '{args.what}': only `labkit fetch cassandra` downloads anything")
    from labkit.services import fetch_cassandra

    path = fetch_cassandra(progress=True)
    print(f"Cassandra jars ready in {path}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from labkit.doctor import diagnose, render

    report = diagnose(include_java=True, platform_name=args.platform)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0 if report["ready"] else 1


def cmd_course(args: argparse.Namespace) -> int:
    from labkit.course import run_course

    return run_course(args.notebooks, out_dir=args.out, timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="Real servers for the Scaling Labs course.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("doctor", help="what this machine can run, and how to install the rest")
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--platform",
        choices=["debian", "colab", "macos", "conda", "binder"],
        default=None,
        help="show the install commands for this platform instead of the detected one",
    )
    s.set_defaults(func=cmd_doctor)
    s = sub.add_parser("up", help="start the shared stack in the background")
    s.add_argument("services", nargs="*", help="postgres memcached cassandra (default: postgres memcached)")
    s.add_argument("--provider", choices=["local", "docker", "external"], default=None)
    s.add_argument("--nodes", help="Cassandra datacenters and node counts, e.g. us:3,eu:2 (default dc1:1)")
    s.add_argument(
        "--inter-dc-delay-ms",
        type=float,
        default=0.0,
        help="one-way latency injected between Cassandra datacenters (userspace proxy)",
    )
    s.add_argument("--postgres-servers", type=int, default=1, help="how many Postgres servers (sharding lab: 2-4)")
    s.add_argument("--memory-mb", type=int, default=None, help="memcached memory (-m)")
    s.set_defaults(func=cmd_up)
    s = sub.add_parser("down", help="stop every server labkit started")
    s.add_argument("--keep-data", action="store_true", help="keep the data directories")
    s.add_argument(
        "--purge",
        action="store_true",
        help="also drop your own namespace (schema, memcached keys, keyspaces) on external servers",
    )
    s.set_defaults(func=cmd_down)
    s = sub.add_parser("status", help="running services and endpoints")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("logs", help="the tail of a service's log")
    s.add_argument("service")
    s.add_argument("-n", "--lines", type=int, default=50)
    s.set_defaults(func=cmd_logs)
    s = sub.add_parser("fetch", help="download Cassandra's jars ahead of time")
    s.add_argument("what", choices=["cassandra"])
    s.set_defaults(func=cmd_fetch)
    s = sub.add_parser("course", help="run every notebook headless, render HTML, summarise checkpoints")
    s.add_argument("notebooks", nargs="*", help="notebooks to run (default: all in notebooks/)")
    s.add_argument("--out", default="course-output", help="where the executed notebooks and HTML go")
    s.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    s.set_defaults(func=cmd_course)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabkitError as e:
        print(f"labkit: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
