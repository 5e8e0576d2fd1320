"""The Java 17 runtime a local Cassandra node needs, and the memory check made before any node starts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psutil

from labkit import config
from labkit.errors import BinaryNotFound, InsufficientResources

JAVA_HINT = (
    "Java 17 not found: apt-get install openjdk-17-jre-headless (Debian/Ubuntu/Colab), "
    "conda install -c conda-forge openjdk=17 (conda, Binder), or use Docker (LABKIT_PROVIDER=docker). "
    "LABKIT_JAVA_BIN may point at a java 17 binary."
)
# where a Java 17 usually lives besides JAVA_HOME and PATH (Debian, conda, Binder, Homebrew)
JAVA_GLOBS = [
    "/usr/lib/jvm/*17*/bin/java",
    "/opt/conda/bin/java",
    "/srv/conda/envs/notebook/bin/java",
    "/usr/local/opt/openjdk@17/bin/java",
    "/opt/homebrew/opt/openjdk@17/bin/java",
]


def java_major(java: Path) -> int | None:
    """The major version `java -version` reports (8 for "1.8.0"), or None when it does not run or say."""
    try:
        r = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', r.stderr + r.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def find_java() -> Path:
    """A Java 17 runtime: LABKIT_JAVA_BIN, else JAVA_HOME, PATH and the usual JVM directories (JAVA_GLOBS)."""
    env = config.current().java_bin
    candidates: list[Path] = []
    if env:
        candidates = [Path(env)]
        if not (candidates[0].is_file() and os.access(candidates[0], os.X_OK)):
            raise BinaryNotFound(
                f"LABKIT_JAVA_BIN={env} is not an executable file: fix the path or unset it. " + JAVA_HINT
            )
    else:
        if os.environ.get("JAVA_HOME"):
            candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
        on_path = shutil.which("java")
        if on_path:
            candidates.append(Path(on_path))
        for pattern in JAVA_GLOBS:
            candidates.extend(sorted(Path("/").glob(pattern.lstrip("/"))))
    seen: list[str] = []
    for c in candidates:
        if not (c.is_file() and os.access(c, os.X_OK)):
            continue
        major = java_major(c)
        if major == 17:
            return c
        seen.append(f"{c} is Java {major if major is not None else '(unknown version)'}")
    if seen:
        raise BinaryNotFound("Cassandra 5.0 needs Java 17, but " + "; ".join(seen) + ". " + JAVA_HINT)
    raise BinaryNotFound(JAVA_HINT)


def check_memory(count: int, footprint_mb: int) -> None:
    """Refuse before starting anything when the nodes cannot fit in the memory available now."""
    avail_mb = psutil.virtual_memory().available // (1024 * 1024)
    need = count * footprint_mb
    if need > avail_mb:
        raise InsufficientResources(
            f"{count} Cassandra node(s) need about {need} MB ({footprint_mb} MB each) but only {avail_mb} MB "
            'of memory is available: ask for fewer nodes (e.g. nodes="us:1,eu:1"), use profile="light", '
            "or stop other servers (`labkit down`)."
        )
