"""A widget panel built from an experiment function's parameters.

    def experiment(clients: int = 8, s: float = 0.99, mode: str = "lease", progress=None, stop=None):
        return run(op, Workload(keys=Zipf(1000, s), clients=clients, duration=5), progress=progress, stop=stop)

    res = labkit.ui.panel(experiment, clients=(1, 64), s=(0.0, 1.5, 0.01), mode=["none", "lease", "stale"])

In JupyterLab this shows sliders/dropdowns (defaults from the signature), Run/Stop buttons, a
tqdm.auto progress bar and a live plot; the run happens on a background thread so the kernel
stays free, and it starts once with the defaults. Headless (nbval, papermill, plain python, or
LABKIT_HEADLESS=1, or LABKIT_PROFILE=ci) the same call runs once with the defaults and returns
the function's result. Interactive, it returns the :class:`Panel`; ``result_of(x)`` gives the
result in both cases (waiting for the run in progress), so the next cell works either way.

If the function accepts ``progress`` and/or ``stop`` parameters, the panel passes a progress
callback (labkit.load.Progress) and a threading.Event set by the Stop button.
"""
from __future__ import annotations

import inspect
import io
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from labkit.errors import BadParameter

__all__ = ["panel", "Panel", "Param", "headless", "result_of"]

_RESERVED = ("progress", "stop")


def headless() -> bool:
    """True when no notebook frontend can show widgets: run with defaults instead."""
    flag = os.environ.get("LABKIT_HEADLESS", "").strip().lower()
    if flag in ("1", "true", "yes"):
        return True
    if flag in ("0", "false", "no"):
        return False
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


@dataclass
class Param:
    """One control: a numeric range (slider), a list of choices (dropdown) or a bool (checkbox)."""

    name: str
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: Sequence[Any] | None = None
    description: str | None = None

    def check(self, value: Any) -> Any:
        """Validate a value for this parameter (used for defaults and in headless runs)."""
        if self.choices is not None:
            if value not in self.choices:
                raise BadParameter(f"{self.name}={value!r}: choose one of {list(self.choices)}")
            return value
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise BadParameter(f"{self.name}={value!r}: must be True or False")
            return value
        if self.low is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadParameter(f"{self.name}={value!r}: must be a number in [{self.low}, {self.high}]")
            if not self.low <= value <= self.high:  # type: ignore[operator]
                raise BadParameter(f"{self.name}={value!r} is outside its range [{self.low}, {self.high}]: "
                                   "pick a value inside it or widen the range")
        return value

    @property
    def integer(self) -> bool:
        return (isinstance(self.default, int) and not isinstance(self.default, bool)
                and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)))


def _spec_to_param(name: str, spec: Any, default: Any) -> Param:
    """Turn ``(low, high)``, ``(low, high, step)``, a list of choices, a bool or a Param into a Param."""
    if isinstance(spec, Param):
        return spec
    if isinstance(spec, list) or (isinstance(spec, tuple) and spec and all(isinstance(s, str) for s in spec)):
        choices = list(spec)
        if not choices:
            raise BadParameter(f"{name}: the list of choices is empty")
        d = default if default is not inspect.Parameter.empty else choices[0]
        p = Param(name, d, choices=choices)
        p.check(d)
        return p
    if isinstance(spec, bool):
        return Param(name, spec if default is inspect.Parameter.empty else default)
    if isinstance(spec, tuple) and len(spec) in (2, 3) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                              for v in spec):
        low, high = spec[0], spec[1]
        if low > high:
            raise BadParameter(f"{name}=({low}, {high}): the range is reversed; write ({high}, {low})")
        step = spec[2] if len(spec) == 3 else None
        if step is not None and step <= 0:
            raise BadParameter(f"{name}: step {step} must be > 0")
        d = default if default is not inspect.Parameter.empty else low
        p = Param(name, d, low, high, step)
        p.check(d)
        return p
    raise BadParameter(f"{name}={spec!r}: give a range (low, high[, step]), a list of choices, a bool, "
                       "or labkit.ui.Param")


def _params(fn: Callable[..., Any], specs: dict[str, Any]) -> tuple[list[Param], set[str]]:
    sig = inspect.signature(fn)
    names = set(sig.parameters)
    unknown = set(specs) - names
    if unknown:
        raise BadParameter(f"{sorted(unknown)} not parameters of {fn.__name__}{sig}: fix the name or add the "
                           "parameter to the function")
    params: list[Param] = []
    for name, p in sig.parameters.items():
        if name in _RESERVED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in specs:
            params.append(_spec_to_param(name, specs[name], p.default))
        elif p.default is inspect.Parameter.empty:
            raise BadParameter(f"parameter {name!r} of {fn.__name__} has no default and no range: give it a "
                               "default in the signature or a spec to panel()")
        elif isinstance(p.default, bool):
            params.append(Param(name, p.default))
        else:
            params.append(Param(name, p.default))  # fixed: shown as text, passed unchanged
    return params, {n for n in _RESERVED if n in names}


def _call(fn: Callable[..., Any], values: dict[str, Any], extras: set[str], progress: Any, stop: Any) -> Any:
    kw = dict(values)
    if "progress" in extras:
        kw["progress"] = progress
    if "stop" in extras:
        kw["stop"] = stop
    return fn(**kw)


class Panel:
    """The interactive panel (widgets + background runs). ``result`` is the latest result."""

    def __init__(self, fn: Callable[..., Any], params: list[Param], extras: set[str], title: str | None,
                 live: bool) -> None:
        self.fn, self.params, self.extras, self.live = fn, params, extras, live
        self.title = title or fn.__name__.replace("_", " ")
        self.result: Any = None
        self.results: list[tuple[dict[str, Any], Any]] = []
        self.error: BaseException | None = None
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
                c = w.IntSlider(value=p.default, min=p.low, max=p.high, step=p.step or 1, description=desc,
                                style=style, continuous_update=False)
            elif p.low is not None:
                step = p.step or (p.high - p.low) / 100 or 0.01  # type: ignore[operator]
                c = w.FloatSlider(value=p.default, min=p.low, max=p.high, step=step, description=desc,
                                  style=style, continuous_update=False)
            else:
                c = w.Text(value=repr(p.default), description=desc, disabled=True, style=style)
            self.controls[p.name] = c
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.status = w.HTML()
        self.image = w.Image(format="png", layout=w.Layout(max_width="760px"))
        self.progress_box = w.Box()
        self.widget = w.VBox([w.HTML(f"<b>{self.title}</b>"), w.VBox(list(self.controls.values())),
                              w.HBox([self.run_button, self.stop_button]), self.progress_box, self.status,
                              self.image])

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)

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
        values = {**self.values(), **overrides}
        self._stop.clear()
        self._done.clear()
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._thread = threading.Thread(target=self._run, args=(values,), daemon=True, name="labkit-panel")
        self._thread.start()

    def _run(self, values: dict[str, Any]) -> None:
        from tqdm.auto import tqdm
        bar = None
        last_plot = [0.0]

        def progress(p: Any) -> None:
            nonlocal bar
            if bar is None:
                bar = self._new_bar(tqdm)
            bar.n = int(p.fraction * 100)
            bar.set_postfix(ops=p.ops, errors=p.errors, refresh=False)
            bar.refresh()
            now = time.monotonic()
            if self.live and p.rows and now - last_plot[0] > 0.5:  # a PNG at most twice a second
                last_plot[0] = now
                self.image.value = _png(p.rows, self.title)

        self.status.value = "running " + ", ".join(f"{k}={v}" for k, v in values.items())
        try:
            self.result = _call(self.fn, values, self.extras, progress, self._stop)
            self.results.append((values, self.result))
            self.error = None
            summary = self.result.summary() if hasattr(self.result, "summary") else repr(self.result)[:300]
            self.status.value = f"<code>{_escape(summary)}</code>"
            if self.live and hasattr(self.result, "rows"):
                self.image.value = _png(self.result.rows, self.title)
        except BaseException as exc:  # shown in the panel; the kernel keeps going
            self.error = exc
            self.status.value = f"<span style='color:#b00'>{_escape(type(exc).__name__)}: {_escape(str(exc))}</span>"
        finally:
            if bar is not None:
                bar.close()
            self.run_button.disabled, self.stop_button.disabled = False, True
            self._done.set()

    def _new_bar(self, tqdm: Any) -> Any:
        """A tqdm.auto bar placed inside the panel. In Jupyter tqdm.auto is the widget flavour:
        build it undisplayed and mount its widget here, because display() from this background
        thread would land in whichever cell the kernel is running now."""
        try:
            bar = tqdm(total=100, desc=self.title, unit="%", leave=True, display=False)
        except (TypeError, KeyError):  # console flavour (no frontend): keep its text out of stdout
            bar = tqdm(total=100, desc=self.title, unit="%", leave=False, file=io.StringIO())
        container = getattr(bar, "container", None)
        if container is not None:
            self.progress_box.children = (container,)
        return bar

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the current run ends; return its result (or raise its error)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the panel's run did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def _escape(text: str) -> str:
    import html
    return html.escape(text)


def _png(rows: list[dict[str, Any]], title: str) -> bytes:
    from labkit.ui.plots import live_figure
    buf = io.BytesIO()
    live_figure(rows, title).savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def panel(fn: Callable[..., Any] | None = None, /, *, title: str | None = None, live: bool = True,
          autorun: bool = True, **specs: Any) -> Any:
    """Build a panel for ``fn`` (or use as ``@panel(clients=(1, 64))``).

    Headless: runs ``fn`` once with its defaults and returns the result.
    Interactive: shows the panel, starts a run with the defaults (``autorun``), returns the Panel.
    """
    if fn is None:
        return lambda f: panel(f, title=title, live=live, autorun=autorun, **specs)
    if not callable(fn):
        raise BadParameter(f"panel() needs the experiment function first, got {fn!r}")
    params, extras = _params(fn, specs)
    if headless():
        values = {p.name: p.check(p.default) for p in params}
        return _call(fn, values, extras, None, threading.Event())
    p = Panel(fn, params, extras, title, live)
    from IPython.display import display
    display(p.widget)
    if autorun:
        p.start()
    return p


def result_of(x: Any, timeout: float | None = None) -> Any:
    """The result whatever panel() returned: a Panel's (waiting for its run) or the value itself."""
    return x.wait(timeout) if isinstance(x, Panel) else x
