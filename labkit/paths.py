"""Where labkit keeps its state: stack records, server data directories, logs and downloaded jars."""

from __future__ import annotations

import os
from pathlib import Path


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def source_root() -> Path:
    """The directory that holds the `labkit` package: put it on PYTHONPATH so child processes import this labkit."""
    return Path(__file__).resolve().parent.parent


def home() -> Path:
    """labkit's own directory. `LABKIT_HOME` overrides it.

    As root (Colab, CI) the default is /var/lib/labkit, so that Postgres, which must run as an
    unprivileged user, can reach its data directory (it could not traverse /root).
    """
    from labkit import config

    env = config.current().home
    if env:
        p = env
    elif is_root():
        p = Path("/var/lib/labkit")
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        p = Path(base) / "labkit"
    p.mkdir(parents=True, exist_ok=True)
    return p.resolve()


def stacks_dir() -> Path:
    p = home() / "stacks"
    p.mkdir(parents=True, exist_ok=True)
    return p


def instances_dir() -> Path:
    p = home() / "instances"
    p.mkdir(parents=True, exist_ok=True)
    return p


def cache_dir() -> Path:
    """Downloads that survive `labkit down` (Cassandra jars). `LABKIT_CACHE` overrides it."""
    from labkit import config

    env = config.current().cache
    p = env if env else home() / "cache"
    p.mkdir(parents=True, exist_ok=True)
    return p
