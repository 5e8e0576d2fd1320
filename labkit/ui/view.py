"""Turning a lesson's view of a result (tables, figures, text) into notebook outputs.

A *view* is a function ``view(result)`` that returns what the learner should see for one result: a
pandas DataFrame (or Styler), a matplotlib Figure or Axes, a string (read as Markdown), anything
IPython can display, or a list/tuple of those. The panel calls it after every run and replaces its
outputs in place; headless, the same objects are displayed once under the cell.

Figures become PNG images here (and are closed), for two reasons: an image in an Output widget
renders in every frontend without a plotting extension (JupyterLab, Colab, VS Code, nbconvert HTML),
and a pyplot figure left open by a background run would otherwise be flushed by the inline backend
into whichever cell the learner runs next.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

__all__ = ["apply", "as_outputs", "render", "show"]


def _figure_of(obj: Any) -> Any | None:
    """The matplotlib Figure behind ``obj`` (a Figure, an Axes, an array of Axes), else None."""
    try:
        from matplotlib.axes import Axes
        from matplotlib.figure import Figure, SubFigure
    except ImportError:  # matplotlib is a dependency; without it nothing is a figure
        return None
    if isinstance(obj, Figure):
        return obj
    if isinstance(obj, SubFigure):
        return obj.figure
    if isinstance(obj, Axes):
        return obj.figure
    try:
        import numpy as np

        if isinstance(obj, np.ndarray) and obj.size and all(isinstance(a, Axes) for a in obj.flat):
            return obj.flat[0].figure
    except ImportError:
        pass
    return None


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    try:
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception:  # a Figure made without pyplot is not registered: nothing to close
        pass
    return buf.getvalue()


def render(obj: Any) -> list[Any]:
    """The displayable objects for one view value (flattening lists, figures to PNG images)."""
    from IPython.display import HTML, Image, Markdown

    if obj is None:
        return []
    if isinstance(obj, (list, tuple)):
        return [x for item in obj for x in render(item)]
    fig = _figure_of(obj)
    if fig is not None:
        return [Image(data=_png(fig), format="png")]
    if isinstance(obj, str):
        return [Markdown(obj)]
    try:
        import pandas as pd

        if isinstance(obj, pd.DataFrame):
            return [HTML(obj.to_html(classes="labkit-table", border=0, na_rep="–"))]
        if isinstance(obj, pd.Series):
            return [HTML(obj.to_frame().to_html(classes="labkit-table", border=0, na_rep="–"))]
        from pandas.io.formats.style import Styler

        if isinstance(obj, Styler):
            return [HTML(obj.to_html())]
    except ImportError:
        pass
    return [obj]


def as_outputs(items: list[Any]) -> list[dict[str, Any]]:
    """Jupyter output dicts (``display_data``) of rendered items, for an Output widget's ``outputs``.

    Building the whole list first and assigning it at once redraws the view in place, without the
    flicker of clear-then-append, and works from the panel's background thread.
    """
    from IPython.core.formatters import format_display_data

    outputs = []
    for item in items:
        data, metadata = format_display_data(item)
        if not data:
            data = {"text/plain": repr(item)}
        outputs.append({"output_type": "display_data", "data": data, "metadata": metadata})
    return outputs


def show(obj: Any) -> None:
    """Display a view value under the current cell (tables as HTML, figures as PNG images)."""
    from IPython.display import display

    for item in render(obj):
        display(item)


def apply(view: Callable[[Any], Any], result: Any) -> list[Any]:
    """``render(view(result))``, closing any pyplot figure the view opened but did not return
    (so it never pops up later under another cell)."""
    import matplotlib.pyplot as plt  # a dependency of labkit

    before = set(plt.get_fignums())
    try:
        return render(view(result))
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
