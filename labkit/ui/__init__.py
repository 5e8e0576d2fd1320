"""Widgets and plots for lessons: ``panel`` (safe headless, with the lesson's view redrawn after
every Run), ``result_of``/``claim_result`` for the cells below it, ``show`` and the standard plots."""

from labkit.ui import plots
from labkit.ui.panel import Panel, Param, claim_result, headless, panel, result_of
from labkit.ui.view import show

__all__ = ["panel", "Panel", "Param", "claim_result", "headless", "result_of", "show", "plots"]
