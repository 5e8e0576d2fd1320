"""Real servers for the labs, behind one contract (see base.Service), from three providers.

- local: the real server binaries run as local processes (Postgres, memcached, Cassandra from Maven jars).
- docker: testcontainers, where a Docker daemon answers.
- external: servers that already run elsewhere (a class cluster), given by environment or a config file.

`LABKIT_PROVIDER=local|docker|external` overrides the automatic choice (docker if a daemon answers, else local).

Other packages use this package's public modules (base, stack, postgres, memcached, cassandra, ...) and the
names exported here (the jar fetch, binary lookup, the unprivileged user); the `_`-modules are its internals.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from labkit.errors import UnknownService
from labkit.services._docker import docker_available, host_namespace_refusal
from labkit.services._process import find_binary, unprivileged_user
from labkit.services.base import Endpoint, Health, Service

KINDS: dict[str, str] = {
    "postgres": "labkit.services.postgres",
    "memcached": "labkit.services.memcached",
    "cassandra": "labkit.services.cassandra",
    "web": "labkit.services.web",
    "worker": "labkit.services.worker",
}
PROVIDERS = ("local", "docker", "external")


def check_kind(kind: str) -> str:
    k = kind.strip().lower() if isinstance(kind, str) else None
    if k not in KINDS:
        raise UnknownService(
            f"unknown service '{kind}': labkit runs {', '.join(KINDS)}. "
            "Check the spelling, e.g. `labkit up postgres memcached`."
        )
    return k


def choose_provider(provider: str | None = None) -> str:
    """The provider to use: the argument, else LABKIT_PROVIDER, else docker if a daemon answers, else local."""
    if provider is not None and not isinstance(provider, str):
        raise UnknownService(f"provider={provider!r}: use one of {', '.join(PROVIDERS)} (a string) or None")
    from labkit import config

    choice = (provider or config.current().provider).strip().lower()
    if not choice or choice == "auto":
        return "docker" if docker_available()[0] else "local"
    if choice not in PROVIDERS:
        raise UnknownService(
            f"unknown provider '{choice}': use one of {', '.join(PROVIDERS)} "
            "(or leave LABKIT_PROVIDER unset to choose automatically)"
        )
    return choice


def fetch_cassandra(progress: bool = True, version: str | None = None) -> Path:
    """Cassandra's jars into labkit's cache (`labkit fetch cassandra`): Maven, else the pinned list; the path.
    Then the class-data sharing archive of those jars for this JVM (cassandra/cds.py), unless it exists."""
    import sys

    from labkit.services.cassandra.cds import build_archive
    from labkit.services.cassandra.jars import fetch_cassandra as fetch

    path = fetch(progress=progress, version=version)
    # the class-data sharing archive that halves a node's start-up CPU (cassandra/cds.py), once per JVM and jars
    build_archive((lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None))
    return path


def cassandra_jars_version() -> str | None:
    """The Cassandra version whose jars are in the cache, or None before `labkit fetch cassandra`."""
    from labkit.services.cassandra.jars import cached_version

    return cached_version()


def service_class(kind: str, provider: str) -> type[Service]:
    kind = check_kind(kind)
    if provider == "external":
        from labkit.services.external import ExternalService

        return ExternalService
    module = importlib.import_module(KINDS[kind])
    cls = getattr(module, provider.upper(), None)
    if cls is None:
        raise UnknownService(f"the {provider} provider cannot run {kind}")
    return cls


__all__ = [
    "Endpoint",
    "Health",
    "Service",
    "KINDS",
    "PROVIDERS",
    "check_kind",
    "choose_provider",
    "service_class",
    "docker_available",
    "host_namespace_refusal",
    "fetch_cassandra",
    "cassandra_jars_version",
    "find_binary",
    "unprivileged_user",
]
