"""Widgets and plots for lessons: ``panel`` (safe headless) and the standard plots."""
from labkit.ui import plots
from labkit.ui.panel import Panel, Param, headless, panel, result_of

__all__ = ["panel", "Panel", "Param", "headless", "result_of", "plots"]
