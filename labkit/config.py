"""labkit's configuration: every ``LABKIT_*`` environment variable, read and validated in one place.

    from labkit import config
    cfg = config.current()          # a frozen Config; parsed once per distinct environment
    cfg.profile, cfg.provider, cfg.home

Modules never read ``LABKIT_*`` from ``os.environ`` themselves: they ask :func:`current` (or take a
``Config`` argument). A bad value fails here with a message that names the variable and the fix.
The table in the README is generated from :data:`VARIABLES` (``python -m labkit.config``), and a
test fails when the two disagree. To hand settings to a child process (a notebook kernel in
``labkit course``) use :meth:`Config.to_env` on the child's environment, never ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import BadParameter

__all__ = ["Config", "Variable", "VARIABLES", "current", "markdown_table"]

PROFILES = ("full", "ci", "light")
PROVIDERS = ("local", "docker", "external", "auto")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, the Config field it fills, its default and what it does."""

    name: str
    field: str
    kind: str  # path | choice | bool | text | words
    default: str  # as shown in the README
    doc: str
    choices: tuple[str, ...] = ()


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "LABKIT_PROFILE",
        "profile",
        "choice",
        "`ci` when `CI` is set, else `full`",
        "run sizes: `full` (laptop), `ci` (short runs, every claim still measured), `light` (Binder, ~2 GB)",
        PROFILES,
    ),
    Variable(
        "LABKIT_PROVIDER",
        "provider",
        "choice",
        "`auto`",
        "where servers come from: `docker` if a daemon answers, else `local`; or `external`",
        PROVIDERS,
    ),
    Variable(
        "LABKIT_HOME",
        "home",
        "path",
        "`~/.local/state/labkit` (root: `/var/lib/labkit`)",
        "stack records, server data directories and logs",
    ),
    Variable(
        "LABKIT_CACHE", "cache", "path", "`$LABKIT_HOME/cache`", "downloads kept across `labkit down` (Cassandra jars)"
    ),
    Variable(
        "LABKIT_HEADLESS",
        "headless",
        "bool",
        "automatic",
        "`1`: panels run once with their defaults (no widgets); `0`: always show widgets",
    ),
    Variable(
        "LABKIT_CHECKPOINT_LOG",
        "checkpoint_log",
        "path",
        "unset",
        "append every checkpoint (claim, measured value, bound) to this JSON-lines file",
    ),
    Variable(
        "LABKIT_NOTEBOOK",
        "notebook",
        "text",
        "unset",
        "the notebook name written with each checkpoint (set by `labkit course`)",
    ),
    Variable(
        "LABKIT_RUN_AS",
        "run_as",
        "text",
        "`postgres`, else a `labkit` user it creates",
        "the unprivileged user Postgres runs as when labkit runs as root",
    ),
    Variable(
        "LABKIT_POSTGRES_BIN",
        "postgres_bin",
        "path",
        "found on PATH and in the usual places",
        "the `postgres` binary to run",
    ),
    Variable("LABKIT_MEMCACHED_BIN", "memcached_bin", "path", "found on PATH", "the `memcached` binary to run"),
    Variable("LABKIT_JAVA_BIN", "java_bin", "path", "`JAVA_HOME`, then PATH", "the Java 17+ `java` for Cassandra"),
    Variable(
        "LABKIT_CASSANDRA_JVM_OPTS",
        "cassandra_jvm_opts",
        "words",
        "unset",
        "extra JVM flags appended to every Cassandra node's command line",
    ),
    Variable("LABKIT_OFFLINE", "offline", "bool", "`0`", "`1`: never download (the Cassandra jars must be cached)"),
    Variable(
        "LABKIT_MAVEN_REPO",
        "maven_repo",
        "text",
        "unset",
        "a Maven repository URL to download the pinned Cassandra jars from when Maven is not installed",
    ),
    Variable(
        "LABKIT_CONFIG",
        "external_config",
        "path",
        "`$LABKIT_HOME/external.json`",
        "JSON file with external endpoints (the same keys as the variables below)",
    ),
    Variable("LABKIT_POSTGRES_DSN", "postgres_dsn", "text", "unset", "external Postgres, a libpq URL"),
    Variable("LABKIT_MEMCACHED", "memcached", "text", "unset", "external memcached, `host:port`"),
    Variable("LABKIT_CASSANDRA", "cassandra", "text", "unset", "external Cassandra contact points, `h1,h2:port`"),
    Variable("LABKIT_CASSANDRA_DC", "cassandra_dc", "text", "unset", "external Cassandra's local datacenter"),
    Variable(
        "LABKIT_NAMESPACE",
        "namespace",
        "text",
        "`lk_<user>__<notebook>`",
        "on external (class) servers: your Postgres schema, memcached key prefix and Cassandra keyspace "
        "prefix; `labkit down --purge` removes it",
    ),
    Variable(
        "LABKIT_CGROUP_ROOT",
        "cgroup_root",
        "path",
        "`/sys/fs/cgroup`",
        "where the cgroup file system is mounted (CPU caps and memory limits)",
    ),
    Variable(
        "LABKIT_IMAGE_POSTGRES",
        "image_postgres",
        "text",
        "`postgres:16-alpine`",
        "docker provider: the Postgres image (any with the official image's contract; CI builds its own)",
    ),
    Variable(
        "LABKIT_IMAGE_MEMCACHED",
        "image_memcached",
        "text",
        "`memcached:1.6-alpine`",
        "docker provider: the memcached image",
    ),
    Variable(
        "LABKIT_IMAGE_CASSANDRA", "image_cassandra", "text", "`cassandra:5.0`", "docker provider: the Cassandra image"
    ),
    Variable(
        "LABKIT_IMAGE_PYTHON",
        "image_python",
        "text",
        "`python:3.12-slim`",
        "docker provider: the image that runs the inter-DC latency proxy of multi-datacenter Cassandra",
    ),
    Variable(
        "LABKIT_NETNS",
        "netns",
        "text",
        "unset",
        "set by `.ci/docker-exec`: the network namespace of CI's private Docker engine (Docker tests "
        "refuse to run outside it on a machine with a /.dockerenv)",
    ),
)
_BY_FIELD = {v.field: v for v in VARIABLES}


@dataclass(frozen=True)
class Config:
    """Every setting labkit reads from the environment, parsed. ``None`` means "not set: use the default"."""

    profile: str = "full"
    provider: str = "auto"
    home: Path | None = None
    cache: Path | None = None
    headless: bool | None = None
    checkpoint_log: Path | None = None
    notebook: str = ""
    run_as: str | None = None
    postgres_bin: Path | None = None
    memcached_bin: Path | None = None
    java_bin: Path | None = None
    cassandra_jvm_opts: tuple[str, ...] = ()
    offline: bool = False
    maven_repo: str | None = None
    external_config: Path | None = None
    postgres_dsn: str | None = None
    memcached: str | None = None
    cassandra: str | None = None
    cassandra_dc: str | None = None
    namespace: str | None = None
    cgroup_root: Path = Path("/sys/fs/cgroup")
    image_postgres: str | None = None
    image_memcached: str | None = None
    image_cassandra: str | None = None
    image_python: str | None = None
    netns: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Parse and validate the ``LABKIT_*`` variables of ``env`` (default: this process's environment)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for var in VARIABLES:
            raw = env.get(var.name, "").strip()
            if not raw:
                continue
            values[var.field] = _parse(var, raw)
        if "profile" not in values and env.get("CI", "").strip():
            values["profile"] = "ci"
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce this configuration in a child process's environment."""
        out: dict[str, str] = {}
        defaults = Config()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == getattr(defaults, f.name) and f.name != "profile":
                continue
            var = _BY_FIELD[f.name]
            if isinstance(value, bool):
                out[var.name] = "1" if value else "0"
            elif isinstance(value, tuple):
                out[var.name] = " ".join(value)
            elif value is not None:
                out[var.name] = str(value)
        return out

    def replace(self, **changes: object) -> Config:
        """A copy with some settings changed (validated like the environment's)."""
        for name, value in changes.items():
            var = _BY_FIELD.get(name)
            if var is None:
                raise BadParameter(f"{name!r} is not a labkit setting: use one of {', '.join(sorted(_BY_FIELD))}")
            if isinstance(value, str):
                changes[name] = _parse(var, value)
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _parse(var: Variable, raw: str) -> object:
    if var.kind == "choice":
        value = raw.lower()
        if value not in var.choices:
            raise BadParameter(
                f"{var.name}={raw!r} is not valid: use one of {', '.join(var.choices)} "
                f"(or unset it for the default, {var.default})"
            )
        return value
    if var.kind == "bool":
        value = raw.lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise BadParameter(f"{var.name}={raw!r} is not a yes/no value: use 1 or 0")
    if var.kind == "path":
        return Path(raw).expanduser()
    if var.kind == "words":
        return tuple(raw.split())
    return raw


_cache_lock = threading.Lock()
_cached: tuple[tuple[tuple[str, str], ...], Config] | None = None


def current() -> Config:
    """The configuration of this process's environment now (parsed again only when a variable changed)."""
    global _cached
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("LABKIT_") or k == "CI"))
    with _cache_lock:
        if _cached is None or _cached[0] != key:
            _cached = (key, Config.from_env())
        return _cached[1]


def markdown_table() -> str:
    """The README's table of variables, generated from VARIABLES."""
    lines = ["| variable | default | what it does |", "|---|---|---|"]
    for v in VARIABLES:
        lines.append(f"| `{v.name}` | {v.default} | {v.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
