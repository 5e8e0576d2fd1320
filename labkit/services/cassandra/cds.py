"""Class-data sharing (AppCDS) for Cassandra's JVMs: its ~10,000 classes parsed and verified once, then mapped.

Loading and verifying the classes of 100 jars is the largest part of a node's start-up CPU (measured on this
course's busy 2-core machine, JVM CPU-seconds until a fresh node serves CQL: 12.1 without an archive, 6.2 with
one, median of 2-3 starts each; the JVM's start to the first system keyspace took 2.7+1.0 s instead of
5.7+2.8 s of wall time; benchmarks/stack_start.py prints these phases). `labkit fetch cassandra` builds the
archive once: a throwaway node records every class it loads (-XX:DumpLoadedClassList) while it starts and
serves a few queries, then ``java -Xshare:dump`` writes those classes into an archive in the jar cache, next to
the jars. Every node then maps it read-only (-XX:SharedArchiveFile), so the pages are shared by all nodes of a
cluster.

The archive's name is a key of the JVM (its path; size and mtime of it and of its libjvm.so) and of the jars
(names, sizes, mtimes): a new JVM or new jars miss it, and the nodes start without it (as before) until
`labkit fetch cassandra` runs again. The JVM also checks the archive itself and ignores one that does not match
(-Xshare:auto, the default).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.errors import LabkitError

if TYPE_CHECKING:
    from labkit.services.cassandra.local import LocalCassandra

ARCHIVE_FLAG = "-XX:SharedArchiveFile="


def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{p.name}:{st.st_size}:{int(st.st_mtime)}"


def archive_path(java: Path, classpath: list[Path]) -> Path:
    """Where the archive for this JVM and these jars lives (whether or not it exists yet)."""
    real = Path(os.path.realpath(java))
    jvm = [p for p in (real, real.parent.parent / "lib" / "server" / "libjvm.so") if p.is_file()]
    key = hashlib.sha1("\n".join([str(real), *map(_stamp, jvm), *map(_stamp, classpath)]).encode()).hexdigest()
    return classpath[0].parent.parent / "cds" / f"{key[:16]}.jsa"


def jvm_flags(java: Path, classpath: list[Path]) -> list[str]:
    """The flag that maps the archive, when one was built for this JVM and these jars; else nothing."""
    path = archive_path(java, classpath)
    return [f"{ARCHIVE_FLAG}{path}"] if path.is_file() else []


def dump_archive(java: Path, classpath: list[Path], class_list: Path) -> Path:
    """``java -Xshare:dump`` of the classes in class_list into this JVM's and jars' archive (atomically)."""
    final = archive_path(java, classpath)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.stem}.{os.getpid()}.partial")
    lib = classpath[0].parent
    r = subprocess.run(
        [
            str(java),
            "-Xshare:dump",
            f"-XX:SharedClassListFile={class_list}",
            f"-XX:SharedArchiveFile={tmp}",
            "-cp",
            f"{lib}/*",  # the nodes' classpath starts with exactly this (their conf/ comes after it)
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if r.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        out = (r.stdout + r.stderr).strip().splitlines()[-5:]
        raise RuntimeError("java -Xshare:dump failed: " + " | ".join(out))
    for old in final.parent.glob("*.jsa"):  # archives of an older JVM or older jars: never used again
        if old != final:
            old.unlink(missing_ok=True)
    os.replace(tmp, final)
    return final


def build_archive(say: Callable[[str], None] = lambda msg: None) -> Path | None:
    """Build the archive for the current JVM and jars unless it exists (a training node start, then the dump).

    Returns its path, or None when it could not be built (the nodes then start without it, as before)."""
    from labkit.services.cassandra.jars import cassandra_classpath
    from labkit.services.cassandra.java import find_java
    from labkit.services.cassandra.local import LocalCassandra

    try:
        java, classpath = find_java(), cassandra_classpath(fetch=False)
    except LabkitError as e:  # no Java 17 here (Docker users) or no jars: nothing to archive
        say(f"labkit: no class-data sharing archive for Cassandra: {e}")
        return None
    path = archive_path(java, classpath)
    if path.is_file():
        return path
    say(f"labkit: building Cassandra's class-data sharing archive (once, 1-3 min) into {path.parent}")
    work = Path(tempfile.mkdtemp(prefix="labkit-cds-"))
    try:
        class_list = work / "classes.lst"
        node = LocalCassandra("cds-training", instance_dir=work / "node")
        node.extra_jvm = [f"-XX:DumpLoadedClassList={class_list}"]
        try:
            node.start()
            _exercise(node)
        finally:
            node.stop()
        path = dump_archive(java, classpath, class_list)
    except Exception as e:  # noqa: BLE001 - an optimisation: without it the nodes start as before
        say(f"labkit: no class-data sharing archive ({e}); Cassandra nodes start without it")
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"labkit: class-data sharing archive ready ({path.stat().st_size // 2**20} MB)")
    return path


def _exercise(node: LocalCassandra) -> None:
    """The statements a lesson's first minutes run, so their classes are in the archive too."""
    from cassandra.cluster import Cluster

    ep = node.endpoint
    cl = Cluster(ep.contact_points, port=ep.port, protocol_version=5)
    try:
        s = cl.connect()
        s.execute("CREATE KEYSPACE k WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1}")
        s.execute("CREATE TABLE k.t (id int PRIMARY KEY, v text)")
        ins = s.prepare("INSERT INTO k.t (id, v) VALUES (?, ?)")
        for i in range(200):
            s.execute(ins, (i, "x"))
        s.execute("SELECT * FROM k.t WHERE id = 1")
        s.execute("SELECT count(*) FROM k.t")
    finally:
        cl.shutdown()
