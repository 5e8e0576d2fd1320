"""Tables published by others that lessons compare their measurements with, read from the repository's
``datasets/`` folder (each file's source and date are in ``datasets/README.md``).

Kept apart from the lessons so any lesson reads a published table the same way, with the same error when a
learner runs outside a checkout of the course.
"""

from __future__ import annotations

import csv
from pathlib import Path

from labkit.errors import LabkitError

__all__ = ["DATASETS", "read_csv"]

DATASETS = Path(__file__).resolve().parents[2] / "datasets"


def read_csv(name: str) -> list[dict[str, str]]:
    """The rows of ``datasets/<name>`` as dicts keyed by the header (strings: the caller converts)."""
    path = DATASETS / name
    if not path.is_file():
        raise LabkitError(
            f"{path} not found: the lesson reads it from the repository's datasets/ folder "
            "(run from a checkout of the course)"
        )
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
