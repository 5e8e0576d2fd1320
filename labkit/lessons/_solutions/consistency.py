"""Reference solution of lesson 05's exercise: the stale-read rule."""

from __future__ import annotations

import math

from labkit.history import Operation


def is_stale(read: Operation, writes: list[Operation]) -> bool:
    # when did the write whose value the read returned certainly take effect? no value: before everything;
    # a timed-out (or unknown) write: maybe never, so it cannot be proven older than anything
    if read.value is None:
        source_done = -math.inf
    else:
        source = next((w for w in writes if w.value == read.value), None)
        if source is None or source.outcome != "ok":
            return False
        source_done = source.effective_complete
    return any(w.outcome == "ok" and w.effective_complete < read.invoke and source_done < w.invoke for w in writes)
