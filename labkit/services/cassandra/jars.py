"""Cassandra without Docker: the cassandra-all jars and their runtime dependencies from Maven Central.

The jars land in ``paths.cache_dir()/cassandra/<version>/lib`` and survive ``labkit down``.

* With Maven on PATH, a generated pom resolves the newest 5.0.x release of
  ``org.apache.cassandra:cassandra-all`` (a version range) with ``mvn dependency:copy-dependencies``
  (runtime scope), from the repositories Maven is configured with (Maven Central unless a mirror is set).
* Without Maven, the pinned list ``cassandra-<version>-jars.txt`` next to this module (one
  ``<path in a Maven repository> <sha1>`` per line, generated from what Maven resolved) is downloaded from the
  repository named by ``LABKIT_MAVEN_REPO`` and every jar's SHA-1 is checked.

``LABKIT_OFFLINE=1`` forbids any download (CI images and tests use it to prove the offline error).
Regenerate the pinned list after a version bump with ``python -m labkit.services.cassandra.jars --pin``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from labkit import config, paths
from labkit.errors import BinaryNotFound, LabkitError, ServiceFailed

PINNED_VERSION = "5.0.9"
SERIES = "5.0."
VERSION_RANGE = "[5.0.0,5.1.0)"
MAVEN_HINT = (
    "install Maven (apt-get install maven, brew install maven, conda install -c conda-forge maven), "
    "or set LABKIT_MAVEN_REPO to the URL of a Maven repository (Maven Central or a mirror)"
)
_MARKER = ".complete"  # written last, so a half-finished download never counts as cached


def offline() -> bool:
    return config.current().offline


def pinned_list(version: str = PINNED_VERSION) -> Path:
    return Path(__file__).with_name(f"cassandra-{version}-jars.txt")


def lib_dir(version: str) -> Path:
    return paths.cache_dir() / "cassandra" / version / "lib"


def read_pins(version: str) -> list[tuple[str, str]]:
    pins = []
    for line in pinned_list(version).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rel, sha1 = line.split()
            pins.append((rel, sha1))
    return pins


def maven_repository() -> str:
    """The base URL the no-Maven path downloads from: LABKIT_MAVEN_REPO (the project names no host itself)."""
    url = (config.current().maven_repo or "").strip()
    if not url:
        raise BinaryNotFound(f"Maven is not installed and LABKIT_MAVEN_REPO is not set: {MAVEN_HINT}.")
    if not re.match(r"https?://", url):
        raise LabkitError(f"LABKIT_MAVEN_REPO={url!r} is not an http(s) URL of a Maven repository")
    return url if url.endswith("/") else url + "/"


def maven_default_repository(mvn: str) -> str | None:
    """The repository URL Maven itself resolves from (its super POM's central), asked of Maven."""
    with tempfile.TemporaryDirectory(prefix="labkit-mvn-") as tmp:
        Path(tmp, "pom.xml").write_text(_pom("1"))
        r = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(Path(tmp, "pom.xml")),
                "help:evaluate",
                "-Dexpression=project.repositories[0].url",
                "-DforceStdout",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    found = re.findall(r"https?://[^\s\x1b]+", r.stdout) if r.returncode == 0 else []
    return found[-1] if found else None


def cached_version() -> str | None:
    """The version whose jars are complete in the cache: the pinned one if present, else the newest."""
    root = paths.cache_dir() / "cassandra"
    done = [d.name for d in root.glob("*") if (d / "lib" / _MARKER).is_file()] if root.is_dir() else []
    if PINNED_VERSION in done:
        return PINNED_VERSION
    if not done:
        return None
    return max(done, key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))


def cassandra_classpath(fetch: bool = True) -> list[Path]:
    """The jars to put on the java classpath, fetched on first use (unless LABKIT_OFFLINE forbids it)."""
    version = cached_version()
    if version is None:
        if offline():
            raise LabkitError(
                f"Cassandra jars are not in {paths.cache_dir() / 'cassandra'} and LABKIT_OFFLINE is set, so "
                "labkit may not download them. Run `labkit fetch cassandra` on a machine with network access "
                "(or unset LABKIT_OFFLINE), or point LABKIT_CACHE at a cache that has them."
            )
        if fetch:
            fetch_cassandra(progress=True)
            version = cached_version()
        if version is None:
            raise LabkitError(
                f"Cassandra jars are not in {paths.cache_dir() / 'cassandra'}: run `labkit fetch cassandra` "
                "(about 70 MB from Maven Central), or use the docker provider."
            )
    return sorted(lib_dir(version).glob("*.jar"))


def fetch_cassandra(progress: bool = True, version: str | None = None) -> Path:
    """Download cassandra-all 5.0.x and its runtime dependencies; return the lib directory.

    Does nothing when the jars are already cached. Uses Maven when present, else the pinned jar list.
    """
    have = cached_version()
    if have is not None and (version is None or version == have):
        return lib_dir(have)
    if offline():
        cassandra_classpath()  # raises the offline error with its fix
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    mvn = shutil.which("mvn")
    if mvn:
        say(
            f"labkit: resolving org.apache.cassandra:cassandra-all:{version or VERSION_RANGE} with Maven "
            f"into {paths.cache_dir() / 'cassandra'}"
        )
        target = _fetch_with_maven(mvn, version or VERSION_RANGE)
        version = target.parent.name
    else:
        version = version or PINNED_VERSION
        if not pinned_list(version).is_file():
            raise BinaryNotFound(
                f"no pinned jar list for Cassandra {version} and Maven is not installed: "
                f"{MAVEN_HINT}; or fetch {PINNED_VERSION}"
            )
        target = lib_dir(version)
        say(f"labkit: Maven not found; downloading the pinned Cassandra {version} jars into {target}")
        fetch_pinned(version, target, say)
    (target / _MARKER).write_text("\n".join(sorted(p.name for p in target.glob("*.jar"))) + "\n")
    say(f"labkit: Cassandra {version} ready ({len(list(target.glob('*.jar')))} jars)")
    return target


def _pom(version: str) -> str:
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>labkit</groupId><artifactId>cassandra-fetch</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId><version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def _fetch_with_maven(mvn: str, version: str) -> Path:
    """Resolve `version` (a version or a range) into the cache; return the lib dir of the resolved version."""
    staging = paths.cache_dir() / "cassandra" / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="labkit-mvn-") as tmp:
        Path(tmp, "pom.xml").write_text(_pom(version))
        r = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(Path(tmp, "pom.xml")),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    if r.returncode != 0 or not any(staging.glob("cassandra-all-*.jar")):
        out = (r.stdout + r.stderr).strip().splitlines()[-20:]
        raise ServiceFailed(
            "Maven could not resolve cassandra-all "
            + version
            + ":\n"
            + "\n".join(out)
            + "\nCheck network access to Maven Central (or a mirror or proxy in ~/.m2/settings.xml)."
        )
    resolved = next(staging.glob("cassandra-all-*.jar")).name[len("cassandra-all-") : -len(".jar")]
    target = lib_dir(resolved)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_pinned(version: str, target: Path, say: Callable[[str], None]) -> None:
    pins = read_pins(version)
    repo = maven_repository()
    staging = target.with_name("lib.partial")
    staging.mkdir(parents=True, exist_ok=True)
    for i, (rel, sha1) in enumerate(pins, 1):
        dest = staging / rel.rsplit("/", 1)[-1]
        if dest.is_file() and _sha1(dest) == sha1:
            continue
        say(f"  [{i}/{len(pins)}] {dest.name}")
        try:
            with urllib.request.urlopen(repo + rel, timeout=60) as r, open(dest, "wb") as f:
                shutil.copyfileobj(r, f)
        except (urllib.error.URLError, OSError) as e:
            raise ServiceFailed(
                f"cannot download {repo + rel}: {e}. Check network access to that repository "
                "(LABKIT_MAVEN_REPO), or run `labkit fetch cassandra` where it is reachable."
            ) from e
        got = _sha1(dest)
        if got != sha1:
            dest.unlink()
            raise ServiceFailed(
                f"checksum mismatch for {rel}: sha1 {got}, expected {sha1}. "
                "The download was corrupted or tampered with; run `labkit fetch cassandra` again."
            )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def write_pins(version: str) -> Path:
    """Regenerate the pinned list from a Maven-resolved lib dir (maintainers, after a version bump)."""
    target = lib_dir(version)
    m2 = Path(os.environ.get("M2_REPO", Path.home() / ".m2" / "repository"))
    lines = [
        f"# org.apache.cassandra:cassandra-all:{version} runtime classpath as resolved by mvn "
        "dependency:copy-dependencies.",
        "# <path in a Maven repository (Maven Central's layout)> <sha1>. Regenerate with: "
        "python -m labkit.services.cassandra.jars --pin",
    ]
    for jar in sorted(target.glob("*.jar")):
        hits = list(m2.rglob(jar.name))
        if not hits:
            raise LabkitError(f"{jar.name} is not in {m2}: fetch with Maven first")
        lines.append(f"{hits[0].relative_to(m2).as_posix()} {_sha1(jar)}")
    out = pinned_list(version)
    out.write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    if "--pin" in sys.argv:
        v = fetch_cassandra()
        print(write_pins(v.parent.name))
    else:
        print(fetch_cassandra())
