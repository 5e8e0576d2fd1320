"""Checkpoints: assert a lesson's measured claim against its bound and print one stable line.

A notebook's checkpoint cell is compared by nbval, so on success it prints only ``PASS  <claim>``
(no numbers: they change every run). The measured value and its bound go into the returned
record, into a process-wide list (:func:`records`) and, when the env variable
``LABKIT_CHECKPOINT_LOG`` names a file, into that file as one JSON line, so a course runner can
summarise every notebook. On failure :class:`labkit.errors.CheckpointFailed` says what was measured,
the bound and the context, like a good test failure.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from labkit import config
from labkit.errors import BadParameter, CheckpointFailed

__all__ = ["CheckpointRecord", "checkpoint", "clear", "records", "summary"]

LOG_ENV = "LABKIT_CHECKPOINT_LOG"


@dataclass(frozen=True)
class CheckpointRecord:
    """One asserted claim: what was measured, against which bound, and whether it held."""

    claim: str
    measured: float
    bound: str
    passed: bool
    context: str = ""
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_records: list[CheckpointRecord] = []
_lock = threading.Lock()


def _fmt(x: float) -> str:
    """Short, readable number for messages: 0.4132 -> '0.413', 17234.2 -> '17234'."""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def _check_bound(
    measured: float, at_least: float | None, at_most: float | None, within: tuple[float, float] | None
) -> tuple[bool, str, str]:
    """Return (passed, bound description, failure description)."""
    if within is not None:
        try:
            target, rel_tol = within
        except (TypeError, ValueError):
            raise BadParameter("within must be a pair (target, rel_tol), e.g. within=(0.6, 0.1)") from None
        if rel_tol < 0:
            raise BadParameter(f"within's rel_tol must be >= 0, got {rel_tol}")
        tol = abs(target) * rel_tol
        ok = abs(measured - target) <= tol
        bound = f"{_fmt(target)} ± {rel_tol:.0%}"
        why = (
            f"{_fmt(measured)} is not within {rel_tol:.0%} of expected {_fmt(target)} "
            f"(allowed {_fmt(target - tol)}..{_fmt(target + tol)})"
        )
        return ok, bound, why
    parts: list[str] = []
    reasons: list[str] = []
    ok = True
    if at_least is not None:
        parts.append(f">= {_fmt(at_least)}")
        if not measured >= at_least:
            ok = False
            reasons.append(f"{_fmt(measured)} < expected {_fmt(at_least)}")
    if at_most is not None:
        parts.append(f"<= {_fmt(at_most)}")
        if not measured <= at_most:
            ok = False
            reasons.append(f"{_fmt(measured)} > expected at most {_fmt(at_most)}")
    return ok, " and ".join(parts), "; ".join(reasons)


def checkpoint(
    claim: str,
    measured: float,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    within: tuple[float, float] | None = None,
    context: str = "",
    quiet: bool = False,
) -> CheckpointRecord:
    """Assert ``measured`` against its bound; print ``PASS  <claim>`` or raise CheckpointFailed.

    Give ``at_least`` and/or ``at_most``, or ``within=(target, rel_tol)`` (relative tolerance,
    e.g. ``(0.6, 0.1)`` accepts 0.54..0.66). ``context`` names the conditions of the measurement
    ("zipf s=0.99, 10% cache") and is part of the failure message. ``quiet`` skips the PASS line
    (tests use it). NaN always fails.
    """
    if not claim or not claim.strip():
        raise BadParameter("checkpoint needs a claim, e.g. checkpoint('hit ratio at s=1.1', 0.7, at_least=0.5)")
    if at_least is None and at_most is None and within is None:
        raise BadParameter(f"checkpoint {claim!r} has no bound: give at_least=, at_most= or within=(target, rel_tol)")
    if within is not None and (at_least is not None or at_most is not None):
        raise BadParameter("give either within=(target, rel_tol) or at_least/at_most, not both")
    try:
        value = float(measured)
    except (TypeError, ValueError):
        raise BadParameter(f"checkpoint {claim!r}: measured value must be a number, got {measured!r}") from None
    passed, bound, why = _check_bound(value, at_least, at_most, within)
    if math.isnan(value):
        passed, why = False, "measured value is NaN (nothing was measured?)"
    rec = CheckpointRecord(claim=claim.strip(), measured=value, bound=bound, passed=passed, context=context)
    _remember(rec)
    if not passed:
        where = f" at {context}" if context else ""
        raise CheckpointFailed(f"{rec.claim}: {why}{where}")
    if not quiet:
        print(f"PASS  {rec.claim}")
    return rec


def _remember(rec: CheckpointRecord) -> None:
    with _lock:
        _records.append(rec)
    cfg = config.current()
    path = cfg.checkpoint_log
    if path:
        line = dict(rec.to_dict(), notebook=cfg.notebook, pid=os.getpid())
        # One write of one line: appends from several processes do not interleave.
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")


def records() -> list[CheckpointRecord]:
    """Every checkpoint asserted in this process, passed or failed, oldest first."""
    with _lock:
        return list(_records)


def clear() -> None:
    """Forget the records of this process (the log file, if any, is left alone)."""
    with _lock:
        _records.clear()


def summary() -> Any:
    """The records as a pandas DataFrame (claim, measured, bound, passed, context)."""
    import pandas as pd

    rows = [r.to_dict() for r in records()]
    cols = ["claim", "measured", "bound", "passed", "context"]
    return pd.DataFrame(rows, columns=cols + ["at"])[cols]
