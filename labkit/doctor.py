"""`labkit doctor`: what this machine can run, and exactly what to install for what is missing."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from labkit import paths, profile
from labkit.errors import BinaryNotFound
from labkit.services import choose_provider, docker_available

# what to install, per platform, per missing piece
INSTALL: dict[str, dict[str, str]] = {
    "debian": {
        "postgres": "sudo apt-get install -y postgresql",
        "memcached": "sudo apt-get install -y memcached",
        "java": "sudo apt-get install -y openjdk-17-jre-headless",
        "peers": "sudo apt-get install -y postgresql-contrib libmemcached-tools",
    },
    "colab": {
        "postgres": "!apt-get -qq install -y postgresql",
        "memcached": "!apt-get -qq install -y memcached",
        "java": "!apt-get -qq install -y openjdk-17-jre-headless",
        "peers": "!apt-get -qq install -y libmemcached-tools",
    },
    "macos": {
        "postgres": "brew install postgresql@16",
        "memcached": "brew install memcached",
        "java": "brew install openjdk@17",
        "peers": "brew install libmemcached",
    },
    "conda": {
        "postgres": "conda install -c conda-forge postgresql",
        "memcached": "conda install -c conda-forge memcached",
        "java": "conda install -c conda-forge openjdk=17",
        "peers": "(pgbench ships with conda-forge postgresql)",
    },
    "binder": {
        "postgres": "add `postgresql` to environment.yml (conda-forge) and rebuild",
        "memcached": "add `memcached` to environment.yml and rebuild",
        "java": "add `openjdk=17` to environment.yml and rebuild",
        "peers": "not needed on Binder",
    },
}


def detect_platform() -> str:
    if "COLAB_RELEASE_TAG" in os.environ or "google.colab" in sys.modules:
        return "colab"
    if (
        os.environ.get("BINDER_SERVICE_HOST")
        or os.environ.get("BINDER_LAUNCH_HOST")
        or os.environ.get("BINDER_REPO_URL")
    ):
        return "binder"
    if os.environ.get("CONDA_PREFIX"):
        return "conda"
    if platform.system() == "Darwin":
        return "macos"
    return "debian"


def _version_of(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=15)
        return (res.stdout + res.stderr).strip().splitlines()[0] if (res.stdout + res.stderr).strip() else "?"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"


def diagnose(include_java: bool = True, platform_name: str | None = None) -> dict[str, Any]:
    """Check this machine; install hints are for `platform_name` (default: the detected platform)."""
    plat = platform_name or detect_platform()
    if plat not in INSTALL:
        from labkit.errors import BadParameter

        raise BadParameter(f"unknown platform {plat!r}: use one of {', '.join(INSTALL)}")
    hints = INSTALL[plat]
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str, fix: str = "", needed: bool = True) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix, "needed": needed})

    add("python", sys.version_info >= (3, 11), platform.python_version(), "use Python 3.11 or newer")
    dok, dwhy = docker_available()
    add("docker", dok, dwhy, "optional: without Docker labkit runs the same servers as local processes", needed=False)
    from labkit.services import find_binary
    from labkit.services.memcached import MC_HINT
    from labkit.services.postgres import pg_binary

    try:
        pg = pg_binary("postgres")
        add("postgres", True, f"{_version_of([str(pg), '--version'])} at {pg}")
    except BinaryNotFound:
        add(
            "postgres",
            dok,
            "not installed" + (" (Docker will run it)" if dok else ""),
            hints["postgres"],
            needed=not dok,
        )
    try:
        mc = find_binary("memcached", ["/usr/bin/memcached"], MC_HINT)
        add("memcached", True, f"{_version_of([str(mc), '-V'])} at {mc}")
    except BinaryNotFound:
        add(
            "memcached",
            dok,
            "not installed" + (" (Docker will run it)" if dok else ""),
            hints["memcached"],
            needed=not dok,
        )
    if include_java:
        from labkit.services.cassandra import find_java

        try:
            java = find_java()
            add("java 17 (Cassandra)", True, f"java 17 at {java}")
        except BinaryNotFound as e:
            add("java 17 (Cassandra)", False, str(e).split(": ", 1)[0][:160], hints["java"], needed=False)
        jars = list((paths.cache_dir() / "cassandra").glob("*/lib/cassandra-all-*.jar"))
        add(
            "cassandra jars",
            bool(jars),
            str(jars[0].parent) if jars else "not fetched yet",
            "labkit fetch cassandra   (or let the first Cassandra lesson fetch them; needs Maven Central)",
            needed=False,
        )
    for peer, bins in (("pgbench (benchmarks)", ["pgbench"]), ("memaslap (benchmarks)", ["memaslap", "memcaslap"])):
        found: str | Path | None = next((shutil.which(b) for b in bins if shutil.which(b)), None)
        if not found and peer.startswith("pgbench"):
            found = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None)
        add(peer, bool(found), str(found) if found else "not installed", hints["peers"], needed=False)
    mem = psutil.virtual_memory()
    avail_gb = mem.available / 2**30
    add(
        "memory",
        avail_gb >= 1.0,
        f"{avail_gb:.1f} GiB free of {mem.total / 2**30:.1f} GiB "
        f"(Cassandra needs ~0.7 GiB per node: up to {int(avail_gb / 0.7)} nodes here)",
        "close other programs; use LABKIT_PROFILE=light",
        needed=True,
    )
    if paths.is_root():
        from labkit.services import unprivileged_user

        u = unprivileged_user()
        add(
            "runs as root",
            True,
            f"Postgres will run as the unprivileged user '{u.pw_name if u else '?'}'",
            needed=False,
        )
    try:
        provider = choose_provider()
    except Exception as e:  # noqa: BLE001
        provider = f"invalid ({e})"
    ready = all(c["ok"] for c in checks if c["needed"])
    return {
        "platform": plat,
        "provider": provider,
        "profile": profile.current(),
        "home": str(paths.home()),
        "checks": checks,
        "ready": ready,
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"labkit doctor  platform={report['platform']}  provider={report['provider']}  "
        f"profile={report['profile']}  state={report['home']}",
        "",
    ]
    width = max(len(c["name"]) for c in report["checks"])
    for c in report["checks"]:
        mark = "ok " if c["ok"] else ("!! " if c["needed"] else "-- ")
        lines.append(f"  {mark}{c['name'].ljust(width)}  {c['detail']}")
        if c["fix"]:
            lines.append(f"     {' ' * width}  fix: {c['fix']}")
    lines.append("")
    lines.append(
        "Ready: the course can run here."
        if report["ready"]
        else "Not ready: install what is marked !! above, then run `labkit doctor` again."
    )
    return "\n".join(lines)
