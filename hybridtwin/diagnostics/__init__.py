"""Diagnostics and plots."""

from .plots import plot_prediction, plot_simulation

__all__ = ["plot_simulation", "plot_prediction"]
