"""What a panel says when a run cannot reach its servers: which cell to run again, in words.

The usual case: the learner pressed "Run All", so the notebook's last cell (``st.close()``) stopped
the servers, and then pressed Run on a panel above it. The experiment function still refers to
the closed stack (``st``) or to addresses of its stopped servers (``MC``, ``DSN``); the panel finds
the stack in the function's globals and says to run the Setup cell again, which rebinds those
names to new servers — the panel's function looks them up at call time, so Run then works.
"""

from __future__ import annotations

import html
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from labkit.errors import NotRunning

SETUP_AGAIN = (
    "The servers were stopped by the notebook's cleanup cell (<code>st.close()</code>): "
    "run the <b>Setup</b> cell(s) again — they start new servers — then press Run."
)


class StackClosed(NotRunning):
    """A panel's run was refused because the stack its experiment uses is closed."""


class Stopped(NotRunning):
    """A queued run was stopped before it started."""


def _stacks(fn: Callable[..., Any]) -> Iterator[Any]:
    """Stacks the function can reach: names it uses first, then any Stack named in its module/notebook."""
    try:
        from labkit.services.stack import Stack
    except ImportError:  # pragma: no cover - the stack module is part of labkit
        return
    g = getattr(fn, "__globals__", {}) or {}
    code = getattr(fn, "__code__", None)
    seen: set[int] = set()
    used = [g.get(n) for n in (code.co_names if code else ())]
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c)]
    # names starting with "_" are IPython's output history (_4, _): an old stack displayed there is
    # not the one the notebook uses now
    named = [v for k, v in list(g.items()) if not k.startswith("_")]
    for obj in [*cells, *used, *named]:
        if isinstance(obj, Stack) and id(obj) not in seen:
            seen.add(id(obj))
            yield obj


def _filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


def closed_stack_message(fn: Callable[..., Any]) -> str | None:
    """The Setup-again message when a stack the function uses (or its notebook holds) is closed."""
    for st in _stacks(fn):
        if getattr(st, "closed", False):
            return SETUP_AGAIN
    return None


def _connection_error(exc: BaseException) -> bool:
    names = {
        "OperationalError",
        "NoHostAvailable",
        "MemcacheUnexpectedCloseError",
        "MemcacheServerError",
        "OperationTimedOut",
        "InterfaceError",
    }
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 10:
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in names:
            return True
        if isinstance(e, OSError) and e.errno is not None:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def explain(exc: BaseException, fn: Callable[..., Any]) -> str | None:
    """What to do about a failed run, in HTML, or None when the error message says it already."""
    closed = closed_stack_message(fn)
    if closed and (isinstance(exc, NotRunning) or _connection_error(exc) or "closed" in str(exc)):
        return closed
    if not _connection_error(exc):
        return None
    for st in _stacks(fn):
        if getattr(st, "closed", False):
            continue
        for name, svc in list(getattr(st, "services", {}).items()):
            try:
                ok = bool(svc.health())
            except Exception:  # noqa: BLE001 - a health probe that raises is a server that does not answer
                ok = False
            if not ok:
                return (
                    f"<b>{html.escape(name)}</b> does not answer (killed, paused or crashed?): "
                    f"<code>st.restart({name!r})</code> starts it again (or <code>st.service({name!r})"
                    ".resume()</code> after a pause), or run the <b>Setup</b> cell(s) again; then press Run."
                )
    return (
        "A server this experiment talks to refused the connection. If you stopped or restarted servers, "
        "run the <b>Setup</b> cell(s) again, then press Run."
    )


def error_html(exc: BaseException, hint: str | None) -> str:
    """The panel's status for a failed run: the hint first; the error; the traceback folded away."""
    head = f"<b>{html.escape(type(exc).__name__)}</b>: {html.escape(str(exc))}"
    parts = []
    if isinstance(exc, (StackClosed, Stopped)):  # their message is the hint itself
        return f"<div style='color:#b00'>{hint or html.escape(str(exc))}</div>"
    if hint:
        parts.append(f"<div style='color:#b00'>{hint}</div>")
        parts.append(f"<div style='color:#666'>({head})</div>")
    else:
        parts.append(f"<div style='color:#b00'>{head}</div>")
    if not isinstance(exc, (StackClosed, Stopped)) and exc.__traceback__ is not None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
        parts.append(f"<details><summary>details (where it failed)</summary><pre>{html.escape(tb)}</pre></details>")
    return "".join(parts)
