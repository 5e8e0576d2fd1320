"""labkit: real servers and measurement tools for the Scaling Labs course."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labkit.errors import LabkitError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from labkit.services.base import Endpoint, Health, Service
    from labkit.services.stack import Stack, stack

# Loaded on first use (PEP 562): the web servers of lessons 04/08 import labkit.webapp in every worker, and
# the stack machinery (psutil, docker, testcontainers) would cost each of them ~0.5 s and megabytes.
_LAZY = {
    "Endpoint": "labkit.services.base",
    "Health": "labkit.services.base",
    "Service": "labkit.services.base",
    "Stack": "labkit.services.stack",
    "stack": "labkit.services.stack",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")


__all__ = ["stack", "Stack", "Endpoint", "Health", "Service", "LabkitError", "__version__"]
