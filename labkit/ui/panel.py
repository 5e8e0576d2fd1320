"""A widget panel built from an experiment function's parameters.

    def experiment(clients: int = 8, s: float = 0.99, seconds: float = 5.0, progress=None, stop=None):
        wl = Workload(keys=Zipf(1000, s), clients=clients, duration=seconds)
        return run(op, wl, progress=progress, stop=stop)

    exp = labkit.ui.panel(experiment, clients=(1, 64), s=(0.0, 1.5, 0.01),
                          view=lambda res: [lesson.table(res), lesson.plot(res)])

In JupyterLab this shows sliders/dropdowns (defaults from the signature), Run/Stop buttons, a
progress bar, a live plot while a run reports intervals, and the lesson's ``view`` of the latest
result (its table and plots), redrawn in place after every Run. The run happens on a background
thread so the kernel stays free, and it starts once with the defaults. Headless (nbval,
papermill, plain python, LABKIT_HEADLESS=1, or LABKIT_PROFILE=ci) the same call runs once with
the defaults, shows the view under the cell (in a kernel) and returns the function's result.
Interactive, it returns the :class:`Panel`; ``result_of(x)`` gives the latest result in both cases
(waiting for the run in progress), and ``claim_result(x)`` the result at the defaults (the lesson's
claim settings) for checkpoint cells.

If the function accepts ``progress`` and/or ``stop`` parameters, the panel passes a progress
callback and a threading.Event set by the Stop button. ``progress`` takes a labkit.load Progress
(what ``labkit.load.run`` hands it) or a fraction in [0, 1] with an optional text:
``progress(i / n, f"s={s}")``.

A run against servers that the notebook's cleanup cell stopped, or that died, does not start (or
fails) with a message saying what to do, instead of a bare ConnectionRefusedError.

The knobs (Param, the specs, ``params_for``) live in ``labkit.ui.params`` and are re-exported here.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from labkit.errors import BadParameter
from labkit.ui import hints
from labkit.ui import view as _view
from labkit.ui.params import Param, params_for

__all__ = ["panel", "Panel", "Param", "claim_result", "headless", "params_for", "result_of"]


# One experiment at a time in a kernel: "Run All" starts every panel's default run, and runs of
# different panels must not share the servers (and the CPU) while they measure.
_RUN_LOCK = threading.Lock()


def headless() -> bool:
    """True when no notebook frontend can show widgets: run with defaults instead."""
    from labkit import config

    flag = config.current().headless
    if flag is not None:
        return flag
    try:
        from labkit import profile

        if profile.current() == "ci":
            return True
    except Exception:  # a bad LABKIT_PROFILE is reported where profiles are used, not here
        pass
    if any(k.startswith("PAPERMILL") for k in os.environ):
        return True
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        return True
    if ip is None or type(ip).__name__ != "ZMQInteractiveShell" or getattr(ip, "kernel", None) is None:
        return True
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return True
    return False


def _call(fn: Callable[..., Any], values: dict[str, Any], extras: set[str], progress: Any, stop: Any) -> Any:
    kw = dict(values)
    if "progress" in extras:
        kw["progress"] = progress
    if "stop" in extras:
        kw["stop"] = stop
    return fn(**kw)


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


class Panel:
    """The interactive panel (widgets + background runs). ``result`` is the latest result.

    Layout, top to bottom: title, controls, Run/Stop, a progress bar with elapsed time, a status
    line (the settings of the result shown, or what went wrong and what to do), the live plot while
    a run reports intervals, and the lesson's view (its table and plots) of the latest result,
    replaced in place after every run.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        params: list[Param],
        extras: set[str],
        title: str | None,
        live: bool,
        view: Callable[[Any], Any] | None = None,
    ) -> None:
        self.fn, self.params, self.extras, self.live, self.view = fn, params, extras, live, view
        self.title = title or fn.__name__.replace("_", " ")
        self.result: Any = None
        self.values_of_result: dict[str, Any] | None = None
        self.results: list[tuple[dict[str, Any], Any]] = []
        self.error: BaseException | None = None
        self.last_seconds: float | None = None
        self._reported = False
        self._live_rows: list[dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._build()

    # -- widgets --------------------------------------------------------------------------------
    def _build(self) -> None:
        import ipywidgets as w

        self.controls: dict[str, Any] = {}
        for p in self.params:
            desc = p.description or p.name
            style = {"description_width": "initial"}
            if p.choices is not None:
                c = w.Dropdown(options=list(p.choices), value=p.default, description=desc, style=style)
            elif isinstance(p.default, bool):
                c = w.Checkbox(value=p.default, description=desc, style=style)
            elif p.low is not None and p.integer:
                c = w.IntSlider(
                    value=p.default,
                    min=p.low,
                    max=p.high,
                    step=p.step or 1,
                    description=desc,
                    style=style,
                    continuous_update=False,
                )
            elif p.low is not None:
                step = p.step or (p.high - p.low) / 100 or 0.01  # type: ignore[operator]
                c = w.FloatSlider(
                    value=p.default,
                    min=p.low,
                    max=p.high,
                    step=step,
                    description=desc,
                    style=style,
                    continuous_update=False,
                )
            else:
                c = w.Text(value=repr(p.default), description=desc, disabled=True, style=style)
            c.add_class("labkit-control")
            self.controls[p.name] = c
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="260px"))
        self.bar_label = w.HTML()
        self.progress_box = w.HBox([self.bar, self.bar_label], layout=w.Layout(display="none"))
        self.progress_box.add_class("labkit-progress")
        self.status = w.HTML()
        self.status.add_class("labkit-status")
        # hidden until it holds a PNG: an empty Image widget shows as a broken-image icon
        self.image = w.Image(format="png", layout=w.Layout(max_width="760px", display="none"))
        self.image.add_class("labkit-live")
        self.output = w.Output()
        self.output.add_class("labkit-view")
        self.widget = w.VBox(
            [
                w.HTML(f"<b>{_escape(self.title)}</b>"),
                w.VBox(list(self.controls.values())),
                w.HBox([self.run_button, self.stop_button]),
                self.progress_box,
                self.status,
                self.image,
                self.output,
            ]
        )
        self.widget.add_class("labkit-panel")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def defaults(self) -> dict[str, Any]:
        """The function's defaults: the settings the lesson states its claims at."""
        return {p.name: p.default for p in self.params}

    def values(self) -> dict[str, Any]:
        out = {}
        for p in self.params:
            c = self.controls[p.name]
            out[p.name] = p.default if c.disabled else p.check(c.value)
        return out

    # -- running ----------------------------------------------------------------------------------
    def start(self, **overrides: Any) -> None:
        """Start a run with the current widget values (plus overrides) on a background thread."""
        if not self._done.is_set():
            self.status.value = "<i>a run is in progress: stop it first</i>"
            return
        closed = hints.closed_stack_message(self.fn)
        if closed:  # say what to do instead of letting the run fail on refused connections
            self.error = hints.StackClosed(closed)
            self.status.value = hints.error_html(self.error, closed)
            return
        values = {**self.values(), **overrides}
        self._stop.clear()
        self._done.clear()
        self.error = None
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._thread = threading.Thread(target=self._run, args=(values,), daemon=True, name="labkit-panel")
        self._thread.start()

    def _progress(self, t0: float) -> Callable[..., None]:
        """The callback handed to the experiment: a labkit.load Progress, or a fraction (+ text).

        It only records: the live plot is drawn by the panel's ticker thread, so a slow PNG never
        stalls the load generator that calls this.
        """

        def progress(p: Any, text: str | None = None) -> None:
            fraction = getattr(p, "fraction", p)
            try:
                self.bar.value = min(1.0, max(0.0, float(fraction)))
            except (TypeError, ValueError):
                return
            self._reported = True
            bits = [f"{self.bar.value:.0%}", f"{time.monotonic() - t0:.0f} s"]
            if hasattr(p, "ops"):
                bits.append(f"{p.ops} ops, {p.errors} errors")
            if text:
                bits.append(_escape(str(text)))
            self.bar_label.value = " · ".join(bits)
            rows = getattr(p, "rows", None)
            if self.live and rows:
                self._live_rows = list(rows)

        return progress

    def _show_live(self, rows: list[dict[str, Any]]) -> None:
        self.image.value = _png(rows, self.title)
        self.image.layout.display = None

    def _tick(self, t0: float) -> None:
        """Elapsed time while the experiment reports nothing (an estimate from the last run's
        length), and the live plot of the intervals reported so far, at most once a second."""
        drawn = None
        while not self._done.wait(0.5):
            rows = self._live_rows
            if rows is not None and rows is not drawn and len(rows) > 1:
                drawn = rows
                try:
                    self._show_live(rows)
                except Exception:  # noqa: BLE001 - a live plot that fails must not end the run
                    pass
            if self._reported:
                continue
            elapsed = time.monotonic() - t0
            if self.last_seconds:
                self.bar.value = min(0.95, elapsed / self.last_seconds)
                self.bar_label.value = f"{elapsed:.0f} s (the last run took {self.last_seconds:.0f} s)"
            else:
                self.bar_label.value = f"{elapsed:.0f} s"

    def _run(self, values: dict[str, Any]) -> None:
        t0 = time.monotonic()
        self._reported = False
        self._live_rows = None
        self.bar.value, self.bar.bar_style = 0.0, "info"
        self.bar_label.value = "starting"
        self.progress_box.layout.display = None
        self.status.value = f"running with {_escape(_fmt(values))} …"
        try:
            if not _RUN_LOCK.acquire(blocking=False):
                self.bar_label.value = "waiting for another panel's run to finish"
                while not _RUN_LOCK.acquire(timeout=0.5):
                    if self._stop.is_set():
                        raise hints.Stopped("stopped before it started (another panel's run was going on)")
                t0 = time.monotonic()
                self.bar_label.value = "starting"
            threading.Thread(target=self._tick, args=(t0,), daemon=True, name="labkit-panel-tick").start()
            try:
                result = _call(self.fn, values, self.extras, self._progress(t0), self._stop)
            finally:
                _RUN_LOCK.release()
            items = _view.apply(self.view, result) if self.view is not None else None
            self.result, self.values_of_result = result, values
            self.results.append((values, result))
            self.last_seconds = time.monotonic() - t0
            self.bar.value, self.bar.bar_style = 1.0, "success"
            self.bar_label.value = f"done in {self.last_seconds:.1f} s"
            self.status.value = f"showing the run with {_escape(_fmt(values))}"
            if items is not None:
                self.output.outputs = tuple(_view.as_outputs(items))
                self.image.layout.display = "none"  # the view replaces the live plot
            else:
                summary = result.summary() if hasattr(result, "summary") else repr(result)[:300]
                self.status.value += f"<br><code>{_escape(summary)}</code>"
                if self.live and getattr(result, "rows", None):
                    self._show_live(result.rows)
        except BaseException as exc:  # shown in the panel; the kernel keeps going
            self.error = exc
            self.bar.bar_style = "danger"
            self.bar_label.value = f"failed after {time.monotonic() - t0:.1f} s"
            self.status.value = hints.error_html(exc, hints.explain(exc, self.fn))
        finally:
            self.run_button.disabled, self.stop_button.disabled = False, True
            self._done.set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the current run ends; return its result (or raise its error)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the panel's run did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def claim_result(self, timeout: float | None = None) -> Any:
        """The result of a run at the defaults (the lesson's claim settings), measuring one if none.

        When the latest run used other values, say so: the checkpoints then check the run at the
        defaults, not the one on screen.
        """
        self._done.wait(timeout)
        defaults = self.defaults()
        for values, result in reversed(self.results):
            if values == defaults:
                if self.values_of_result != defaults:
                    print(
                        f"Note: your last Run used {_fmt(_changed(self.values_of_result or {}, defaults))}; "
                        f"the claims are stated at {_fmt(_changed(defaults, self.values_of_result or {}))}, "
                        "so the checks below use the run at those settings."
                    )
                return result
        print(f"Measuring at the lesson's settings ({_fmt(defaults)}) for the checks below …")
        with _RUN_LOCK:
            result = _call(self.fn, defaults, self.extras, None, threading.Event())
        self.results.append((defaults, result))
        return result


def _changed(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in a.items() if b.get(k) != v} or a


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def _png(rows: list[dict[str, Any]], title: str) -> bytes:
    from labkit.ui.plots import live_figure

    buf = io.BytesIO()
    live_figure(rows, title).savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _in_kernel() -> bool:
    """A shell that shows displays (a Jupyter kernel, the IPython terminal), not the bare
    singleton that IPython's display helpers create in a plain Python process."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and type(ip).__name__ != "InteractiveShell"


def panel(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    title: str | None = None,
    live: bool = True,
    autorun: bool = True,
    view: Callable[[Any], Any] | None = None,
    **specs: Any,
) -> Any:
    """Build a panel for ``fn`` (or use as ``@panel(clients=(1, 64))``).

    ``view(result)`` returns the lesson's view of a result: a DataFrame, a matplotlib Figure/Axes, a
    Markdown string, or a list of those. The panel redraws it in place after every run; headless, it
    is shown once under the cell.

    Headless: runs ``fn`` once with its defaults and returns the result.
    Interactive: shows the panel, starts a run with the defaults (``autorun``), returns the Panel.
    """
    if fn is None:
        return lambda f: panel(f, title=title, live=live, autorun=autorun, view=view, **specs)
    if not callable(fn):
        raise BadParameter(f"panel() needs the experiment function first, got {fn!r}")
    if view is not None and not callable(view):
        raise BadParameter(
            f"view={view!r}: give a function of the result that returns tables/figures, "
            "e.g. view=lambda df: [lesson.table(df), lesson.plot(df)]"
        )
    params, extras = params_for(fn, specs)
    if headless():
        values = {p.name: p.check(p.default) for p in params}
        result = _call(fn, values, extras, None, threading.Event())
        if view is not None and _in_kernel():
            for item in _view.apply(view, result):
                from IPython.display import display

                display(item)
        return result
    p = Panel(fn, params, extras, title, live, view)
    from IPython.display import display

    display(p.widget)
    if autorun:
        p.start()
    return p


def result_of(x: Any, timeout: float | None = None) -> Any:
    """The result whatever panel() returned: a Panel's (waiting for its run) or the value itself."""
    return x.wait(timeout) if isinstance(x, Panel) else x


def claim_result(x: Any, timeout: float | None = None) -> Any:
    """The result at the lesson's claim settings (the function's defaults), for checkpoint cells.

    Headless this is the value itself (panel() ran the defaults). Interactive, it is the panel's run
    at the defaults — measured now if the learner never ran them — with a note when the latest run
    on screen used other values, so a checkpoint never fails obscurely on the learner's settings.
    """
    return x.claim_result(timeout) if isinstance(x, Panel) else x
