"""Run profiles: how long experiments run and how much data they use.

- "full": the default for a learner on a laptop.
- "ci": CI and the headless course run: short runs and small data; every claim is still measured.
- "light": Binder (~2 GB for everything): one Cassandra node per datacenter, small caches.
Set LABKIT_PROFILE to choose; Binder's start script sets "light".
"""

from __future__ import annotations

from labkit import config
from labkit.config import PROFILES

__all__ = ["PROFILES", "current", "pick"]


def current() -> str:
    """The profile in force (LABKIT_PROFILE, validated by labkit.config)."""
    return config.current().profile


def pick(full: float, ci: float, light: float | None = None) -> float:
    """The value of a size or duration for the current profile (light defaults to ci's)."""
    return {"full": full, "ci": ci, "light": ci if light is None else light}[current()]
