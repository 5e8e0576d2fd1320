"""A Jupyter server pre-save hook that keeps widget views out of saved notebooks.

A panel lives in the kernel: its output in the notebook is only a reference to a widget model
(``application/vnd.jupyter.widget-view+json``). Saved and reopened without the kernel that made
it, JupyterLab shows "Error displaying widget: model not found" there. Saving without those
outputs (and without saved widget state) leaves the cell empty instead, until it is run again;
every other output — tables, plots, checkpoint lines — is kept.

``make lab`` starts JupyterLab with it::

    jupyter lab --ContentsManager.pre_save_hook=labkit.ui.jupyter.strip_widget_views
"""

from __future__ import annotations

from typing import Any

__all__ = ["strip_widget_views", "WIDGET_VIEW"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_notebook(nb: dict[str, Any]) -> int:
    """Remove widget-view outputs and saved widget state from a notebook dict; return how many outputs."""
    removed = 0
    for cell in nb.get("cells", []):
        outputs = cell.get("outputs")
        if not outputs:
            continue
        kept = [o for o in outputs if WIDGET_VIEW not in (o.get("data") or {})]
        removed += len(outputs) - len(kept)
        cell["outputs"] = kept
    (nb.get("metadata") or {}).pop("widgets", None)
    return removed


def strip_widget_views(model: dict[str, Any], **kwargs: Any) -> None:
    """Jupyter server ``pre_save_hook``: strip widget views from notebooks as they are saved."""
    if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
        strip_notebook(model["content"])
