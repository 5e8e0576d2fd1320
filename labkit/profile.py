"""Run profiles: how long experiments run and how much data they use.

- "full": the default for a learner on a laptop.
- "ci": CI and the headless course run: short runs and small data; every claim is still measured.
- "light": Binder (~2 GB for everything): one Cassandra node per datacenter, small caches.
Set LABKIT_PROFILE to choose; Binder's start script sets "light".
"""
from __future__ import annotations

import os

from labkit.errors import BadParameter

PROFILES = ("full", "ci", "light")


def current() -> str:
    value = os.environ.get("LABKIT_PROFILE", "").strip().lower() or ("ci" if os.environ.get("CI") else "full")
    if value not in PROFILES:
        raise BadParameter(f"LABKIT_PROFILE={value!r} is not a profile: use one of {', '.join(PROFILES)}")
    return value


def pick(full: float, ci: float, light: float | None = None) -> float:
    """The value of a size or duration for the current profile (light defaults to ci's)."""
    return {"full": full, "ci": ci, "light": ci if light is None else light}[current()]
